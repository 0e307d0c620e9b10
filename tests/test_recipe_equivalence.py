"""The served tensor against the libraries' own eval transforms, on the path the handler serves
(JPEG draft decoding, TorchCodec and tensor resizing included), on real photos of several
aspect ratios: timm's transforms_imagenet_eval for every crop mode, crop_pct, interpolation and
size (a rectangular one too), and torchvision weights' transforms. In normalised units: max abs
<= 0.05 and mean <= 0.002 where draft decoding does not apply; where it does (DCT scaling of
large JPEGs), the difference is printed and bounded more loosely."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import torchvision
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_eval

from handlers.model.checkpoint import load_classifier
from handlers.model.recipe import Recipe, normalize
from handlers.request.pixels import draft_target, image_pixels
from modeltools.convert import recipe_for
from tests.conftest import IMAGES, labelled_photos

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TIMM_MATRIX = [
    *itertools.product(("center", "squash", "border"), (0.875, 0.95, 1.0), ("bilinear", "bicubic"), (224,)),
    ("center", 0.875, "bicubic", 288),
    ("squash", 1.0, "bicubic", 384),
    ("border", 0.95, "bilinear", 384),
    ("center", 0.9, "bicubic", (288, 224)),
    ("squash", 0.95, "bilinear", (256, 320)),
    ("border", 0.95, "bicubic", (256, 320)),
]


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shapes() -> dict[str, bytes]:
    """One real photo as a 3:1 panorama, a 1:2 portrait, a square and a 12 MP frame."""
    src = Image.open(IMAGES / "dog1.jpg").convert("RGB")
    w, h = src.size
    return {
        "panorama_3x1": _jpeg(src.crop((0, h // 3, w, h // 3 + w // 3)).resize((900, 300), Image.BICUBIC)),
        "portrait_1x2": _jpeg(src.crop((0, 0, h // 2, h)).resize((300, 600), Image.BICUBIC)),
        "square": _jpeg(src.crop((0, 0, h, h)).resize((400, 400), Image.BICUBIC)),
        "12MP": _jpeg(src.resize((4000, 3000), Image.BICUBIC)),
    }


def _drafted(data: bytes, recipe: Recipe) -> bool:
    w, h = Image.open(io.BytesIO(data)).size
    tw, th = draft_target(w, h, recipe)
    return w >= 2 * tw and h >= 2 * th  # Pillow's DCT scaling would shrink it


def _compare(reference: torch.Tensor, data: bytes, recipe: Recipe, label: str):
    served = normalize(image_pixels(data, 10**9, recipe)[None], recipe)[0]
    assert served.shape == reference.shape, (label, served.shape, reference.shape)
    diff = (served - reference).abs()
    if _drafted(data, recipe):
        print(f"{label}: draft decoding, max {diff.max():.3f} mean {diff.mean():.4f}")
        assert diff.mean() <= 0.02, label
    else:
        assert diff.max() <= 0.05 and diff.mean() <= 0.002, (label, diff.max().item(), diff.mean().item())


@pytest.mark.parametrize("mode, pct, interpolation, size", TIMM_MATRIX, ids=lambda v: str(v))
def test_served_tensor_matches_timms_eval_transform(shapes, mode, pct, interpolation, size):
    hw = (size, size) if isinstance(size, int) else size
    recipe = Recipe.from_timm_config(
        {
            "input_size": (3, *hw),
            "crop_pct": pct,
            "crop_mode": mode,
            "interpolation": interpolation,
            "mean": MEAN,
            "std": STD,
        }
    )
    assert recipe.crop_mode == mode and recipe.crop_hw == hw
    transform = transforms_imagenet_eval(
        img_size=size, crop_pct=pct, crop_mode=mode, interpolation=interpolation, mean=MEAN, std=STD
    )
    for name, data in shapes.items():
        _compare(transform(Image.open(io.BytesIO(data)).convert("RGB")), data, recipe, f"{mode} {pct} {size} {name}")


@pytest.mark.parametrize(
    "arch, weights",
    [("resnet50", "IMAGENET1K_V2"), ("efficientnet_b0", "IMAGENET1K_V1"), ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")],
)
def test_served_tensor_matches_torchvision_weights_transforms(shapes, arch, weights):
    recipe = recipe_for(f"torchvision:{arch}.{weights}", None)
    transform = torchvision.models.get_model_weights(arch)[weights].transforms()
    for name, data in shapes.items():
        reference = transform(Image.open(io.BytesIO(data)).convert("RGB"))
        _compare(reference, data, recipe, f"{arch}.{weights} {name}")


def test_library_recipes_need_no_recipe_flag():
    squash = recipe_for("timm:convnextv2_nano.fcmae_ft_in22k_in1k_384", None)
    assert (squash.crop_mode, squash.crop_size, squash.resize_size) == ("squash", 384, 384)
    tv = recipe_for("torchvision:resnet50", None, weights="IMAGENET1K_V2")
    assert (tv.crop_size, tv.resize_size, tv.interpolation) == (224, 232, "bilinear")
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        Recipe(crop_mode="zoom")
    with pytest.raises(ValueError, match="has no weights"):
        recipe_for("torchvision:resnet50.IMAGENET1K_V9", None)
    from handlers.model.checkpoint import build_architecture

    assert build_architecture("torchvision:resnet18.IMAGENET1K_V1", 10).fc.out_features == 10
    assert build_architecture("timm:resnet18.a1_in1k", 10).fc.out_features == 10


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
def test_default_model_under_each_crop_mode_answers_like_timms_pipeline(default_checkpoint, mode):
    model, info = load_classifier(default_checkpoint, torch.device("cpu"))
    base = info.recipe.to_dict()
    recipe = Recipe.from_dict({**base, "crop_mode": mode})
    pct = info.recipe.crop_size / info.recipe.resize_size
    transform = transforms_imagenet_eval(
        img_size=recipe.crop_size,
        crop_pct=pct,
        crop_mode=mode,
        interpolation=recipe.interpolation,
        mean=recipe.mean,
        std=recipe.std,
    )
    names = [n for n, labels in labelled_photos().items() if labels]
    reference = torch.stack([transform(Image.open(IMAGES / n).convert("RGB")) for n in names])
    with torch.inference_mode():
        p_ref = model(reference).softmax(1)
    top = p_ref.argmax(1, keepdim=True)
    # as served (JPEG draft decoding shifts large photos a little), and fully decoded
    for draft, tolerance in ((True, 0.08), (False, 0.02)):
        served = torch.stack(
            [
                normalize(image_pixels((IMAGES / n).read_bytes(), 10**9, recipe, draft=draft)[None], recipe)[0]
                for n in names
            ]
        )
        with torch.inference_mode():
            p_served = model(served).softmax(1)
        assert torch.equal(p_served.argmax(1), p_ref.argmax(1)), (mode, draft)
        assert (p_served.gather(1, top) - p_ref.gather(1, top)).abs().max() <= tolerance, (mode, draft)
