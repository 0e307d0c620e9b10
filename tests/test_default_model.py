"""The default model's recipe is the one it was trained with, and a wrong one is visibly worse."""

import dataclasses

import pytest
import timm
import torch

from handlers.model.checkpoint import load_classifier
from handlers.model.recipe import Recipe, normalize
from handlers.request.decoding import decode_image
from handlers.request.pixels import recipe_pixels

IMAGENET_MEAN_STD = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@pytest.fixture(scope="module")
def model_and_info(default_checkpoint):
    return load_classifier(default_checkpoint, torch.device("cpu"))


def top1(model, info, recipe, data):
    x = normalize(recipe_pixels(decode_image(data, 50_000_000), recipe)[None], recipe)
    with torch.inference_mode():
        p = model(x).softmax(1)[0]
    return info.labels[int(p.argmax())], float(p.max())


def test_recipe_is_timms_pretrained_config_for_the_architecture(model_and_info):
    _, info = model_and_info
    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    assert info.recipe == Recipe.from_timm_config(cfg)
    assert info.recipe == Recipe(224, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    "name, label, reference", [("dog1.jpg", "Labrador retriever", 0.93), ("croco.jpg", "African crocodile", 0.87)]
)
def test_confidence_matches_reference_and_drops_with_imagenet_mean_std(model_and_info, photos, name, label, reference):
    model, info = model_and_info
    got_label, got_p = top1(model, info, info.recipe, photos[name])
    assert got_label == label and got_p == pytest.approx(reference, abs=0.01)
    wrong = dataclasses.replace(info.recipe, **IMAGENET_MEAN_STD)
    _, wrong_p = top1(model, info, wrong, photos[name])
    assert wrong_p < got_p - 0.08  # measured here: dog1 0.93 -> 0.76, croco 0.87 -> 0.77
