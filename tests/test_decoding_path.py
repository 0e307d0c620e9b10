"""image_pixels: JPEGs go through TorchCodec where it matches Pillow, everything else through Pillow.

The served pixels must be exactly what Pillow's path gives (decode_image + recipe_pixels), and
each input must take the path the docs say it takes.
"""

import io

import pytest
import torch
from PIL import Image

from handlers.request import decoding as jpeg
from handlers.request.errors import InputError
from handlers.request.decoding import decode_image
from handlers.request.pixels import image_pixels, recipe_pixels
from handlers.model.recipe import Recipe
from tests.conftest import IMAGES, jpeg_bytes

LIMIT = 50_000_000
RECIPE = Recipe(crop_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
PHOTOS = sorted(IMAGES.glob("*.jpg"))


def pillow_pixels(data: bytes, recipe: Recipe = RECIPE, draft: bool = True) -> torch.Tensor:
    return recipe_pixels(decode_image(data, LIMIT, recipe.resize_size if draft else None), recipe)


def photo(name, size=None, **save) -> bytes:
    img = Image.open(name).convert("RGB")
    return jpeg_bytes(img.resize(size, Image.BICUBIC) if size else img, quality=90, **save)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
@pytest.mark.parametrize("size", [None, (500, 375), (375, 500), (700, 1000), (2000, 300)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_real_photos_give_pillows_pixels_exactly(path, size, interpolation, torchcodec_calls):
    data = path.read_bytes() if size is None else photo(path, size)
    recipe = Recipe(crop_size=224, resize_size=256, interpolation=interpolation)
    served = image_pixels(data, LIMIT, recipe)
    w, h = Image.open(io.BytesIO(data)).size
    drafted = min(w // 256, h // 256) >= 2  # Pillow can decode at 1/2 scale or less
    assert torchcodec_calls == ([] if drafted else [len(data)])
    assert served.shape == (3, 224, 224) and served.dtype == torch.uint8
    assert torch.equal(served, pillow_pixels(data, recipe))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows(orientation, torchcodec_calls):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = photo(IMAGES / "dog1.jpg", (500, 300), exif=exif)
    assert torch.equal(image_pixels(data, LIMIT, RECIPE), pillow_pixels(data))
    assert len(torchcodec_calls) == 1


def test_grayscale_and_progressive_jpegs(torchcodec_calls):
    gray = jpeg_bytes(Image.open(IMAGES / "croco.jpg").convert("L"))
    progressive = photo(IMAGES / "persons.jpg", progressive=True)
    for data in (gray, progressive):
        assert torch.equal(image_pixels(data, LIMIT, RECIPE), pillow_pixels(data))
    assert len(torchcodec_calls) == 2


def test_large_jpegs_keep_pillows_draft_decoding(torchcodec_calls):
    data = photo(IMAGES / "bus.jpg", (1620, 2160))  # 1/2 scale still >= 256 on both sides
    assert torch.equal(image_pixels(data, LIMIT, RECIPE), pillow_pixels(data))
    assert torchcodec_calls == []
    # without draft decoding the full-size JPEG goes to TorchCodec, with the same pixels as Pillow
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, draft=False), pillow_pixels(data, draft=False))
    assert torchcodec_calls == [len(data)]


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("WEBP", "RGB"), ("JPEG", "CMYK")])
def test_other_formats_and_modes_stay_on_pillow(fmt, mode, torchcodec_calls):
    buf = io.BytesIO()
    Image.open(IMAGES / "cat.jpg").convert(mode).save(buf, format=fmt)
    data = buf.getvalue()
    assert torch.equal(image_pixels(data, LIMIT, RECIPE), pillow_pixels(data))
    assert torchcodec_calls == []


@pytest.mark.parametrize("interpolation", ["nearest", "lanczos"])
def test_pillow_only_filters_stay_on_pillow(interpolation, torchcodec_calls):
    recipe = Recipe(crop_size=224, resize_size=256, interpolation=interpolation)
    data = photo(IMAGES / "dog.jpg")
    assert torch.equal(image_pixels(data, LIMIT, recipe), pillow_pixels(data, recipe))
    assert torchcodec_calls == []


def test_truncated_jpeg_gets_pillows_error(torchcodec_calls):
    data = photo(IMAGES / "dog.jpg")
    with pytest.raises(InputError) as err:
        image_pixels(data[: len(data) // 2], LIMIT, RECIPE)
    assert (err.value.code, err.value.type) == (400, "corrupt_image")
    assert "truncated" in err.value.message
    assert len(torchcodec_calls) == 1  # TorchCodec refused it; Pillow's check answered


def test_pixel_limit_is_checked_before_torchcodec(torchcodec_calls):
    data = photo(IMAGES / "dog.jpg")
    with pytest.raises(InputError) as err:
        image_pixels(data, 640 * 480 - 1, RECIPE)
    assert (err.value.code, err.value.type) == (413, "too_many_pixels")
    assert torchcodec_calls == []


def test_without_torchcodec_pillow_decodes_everything(monkeypatch):
    monkeypatch.setattr(jpeg, "decode_jpeg", None)
    data = photo(IMAGES / "kitten.jpg", (500, 375))
    assert torch.equal(image_pixels(data, LIMIT, RECIPE), pillow_pixels(data))


def test_mpo_phone_photo_gives_its_first_frame(torchcodec_calls):
    first = Image.open(IMAGES / "dog.jpg").convert("RGB")
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[first.rotate(90)])
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert torch.equal(image_pixels(data, LIMIT, RECIPE), pillow_pixels(data))
    assert len(torchcodec_calls) == 1


def test_switched_off_pillow_decodes_everything(torchcodec_calls):
    data = photo(IMAGES / "kitten.jpg", (500, 375))
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, torchcodec=False), pillow_pixels(data))
    assert torchcodec_calls == []
