import pytest
import timm

from handlers.model.recipe import Recipe


def test_timm_config_of_tf_efficientnet_lite0():
    recipe = Recipe.from_timm_config(timm.models.get_pretrained_cfg("tf_efficientnet_lite0").to_dict())
    assert recipe == Recipe(224, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_round_trip_through_plain_types():
    recipe = Recipe(240, 274, "bilinear", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    d = recipe.to_dict()
    assert isinstance(d["mean"], list)
    assert Recipe.from_dict(d) == recipe


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_size": 0}, "crop_size"),
        ({"resize_size": 100}, "resize_size"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"std": (float("nan"), 0.5, 0.5)}, "std"),
    ],
)
def test_invalid_recipes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**kwargs)


def test_unknown_recipe_key_is_refused():
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({"crop_size": 224, "crop_pct": 0.9})
