import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from handlers.model.recipe import Recipe, normalize
from handlers.request.decoding import decode_image, to_rgb
from handlers.request.errors import InputError
from handlers.request.pixels import pil_tensor, recipe_pixels, reference_pixels
from tests.conftest import IMAGES, jpeg_bytes

LIMIT = 50_000_000


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient(w=64, h=48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2), "RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_decode_to_rgb(fmt):
    img = decode_image(encoded(gradient(), fmt), LIMIT)
    assert img.mode == "RGB" and img.size == (64, 48)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img = decode_image(jpeg_bytes(gradient(64, 48), exif=exif), LIMIT)
    assert img.size == (48, 64)


def test_alpha_is_composited_over_white_not_dropped():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    assert decode_image(encoded(rgba, "PNG"), LIMIT).getpixel((0, 0)) == (255, 255, 255)


def test_alpha_is_composited_exactly_as_alpha_composite_over_white():
    v = np.arange(256, dtype=np.uint8)
    every = np.zeros((256, 256, 4), np.uint8)  # every sample value (rows) at every alpha (columns)
    every[..., :3] = v[:, None, None]
    every[..., 3] = v[None, :]
    rgba = Image.fromarray(every, "RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    expected = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    assert np.array_equal(np.asarray(to_rgb(rgba)), expected)
    assert np.array_equal(
        np.asarray(to_rgb(rgba.convert("LA"))),
        np.asarray(Image.alpha_composite(white, rgba.convert("LA").convert("RGBA")).convert("RGB")),
    )


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("w, h", [(1, 1), (7, 3), (3000, 2000), (1, 5000), (5000, 1)])
def test_pil_tensor_is_torchvisions_pil_to_tensor(mode, w, h):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    ours, theirs = pil_tensor(img), F.pil_to_tensor(img)
    assert ours.shape == theirs.shape and ours.stride() == theirs.stride()  # channels-last, like Pillow's HWC
    assert torch.equal(ours, theirs)


def test_16_bit_grayscale_is_scaled_not_clipped():
    arr = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    img = decode_image(encoded(Image.fromarray(arr), "PNG"), LIMIT)
    assert img.getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_jpeg_decodes():
    img = decode_image(jpeg_bytes(gradient().convert("CMYK")), LIMIT)
    assert img.mode == "RGB"


def test_pixel_limit_is_checked_from_the_header():
    big = encoded(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(InputError) as err:
        decode_image(big, 1_000_000)
    assert err.value.code == 413 and err.value.type == "too_many_pixels"


@pytest.mark.parametrize(
    "data, code, type_",
    [
        (b"", 400, "empty_body"),
        (b"hello, this is text", 400, "not_an_image"),
        (b"%PDF-1.4 junk", 415, "unsupported_format"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', 415, "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, 400, "corrupt_image"),
    ],
)
def test_refusals(data, code, type_):
    with pytest.raises(InputError) as err:
        decode_image(data, LIMIT)
    assert (err.value.code, err.value.type) == (code, type_)


def test_truncated_jpeg_is_refused_as_corrupt():
    data = jpeg_bytes(gradient(256, 256), quality=95)
    with pytest.raises(InputError) as err:
        decode_image(data[: len(data) // 2], LIMIT)
    assert err.value.type == "corrupt_image" and err.value.code == 400


def test_draft_decoding_keeps_both_sides_at_or_above_the_target():
    data = jpeg_bytes(gradient(2000, 1500))
    img = decode_image(data, LIMIT, draft_size=256)
    assert min(img.size) >= 256 and img.size[0] < 2000


def test_recipe_pixels_shape_and_dtype():
    recipe = Recipe(crop_size=224, resize_size=256)
    out = recipe_pixels(gradient(640, 480), recipe)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8


def test_normalize_matches_the_formula():
    recipe = Recipe(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = normalize(batch, recipe)
    assert out[0, 0, 0].tolist() == [-1.0, 1.0]
    assert out[0, 1, 0].tolist() == [-2.0, 2.0]


def test_palette_with_transparency():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30] * 256)
    p.info["transparency"] = 0
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("size", [(20000, 3), (2, 9000), (1, 1)])
def test_extreme_aspect_ratios_and_tiny_images_give_the_recipe_shape(size):
    out = recipe_pixels(Image.new("RGB", size, (10, 20, 30)), Recipe())
    assert out.shape == (3, 224, 224)
    assert out[:, 112, 112].tolist() == [10, 20, 30]


def test_aspect_limit_leaves_the_center_crop_unchanged():
    img, recipe = gradient(1200, 200), Recipe()  # 6:1, so it is cut to 4:1 first
    resized = F.resize(img, recipe.resize_size, interpolation=F.InterpolationMode.BILINEAR)
    full = F.pil_to_tensor(F.center_crop(resized, [recipe.crop_size] * 2))
    assert (recipe_pixels(img, recipe).int() - full.int()).abs().float().mean() < 1.0


def _photo_resized(name: str, size) -> Image.Image:
    return Image.open(IMAGES / name).convert("RGB").resize(size, Image.BICUBIC)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1200, 900), (3000, 1000), (640, 641), (300, 260), (120, 90)])
@pytest.mark.parametrize("crop, resize", [(224, 256), (224, 224), (300, 320)])
def test_tensor_resize_stays_within_a_few_levels_of_pillows(interpolation, size, crop, resize):
    """The served resize (torch's antialiased uint8 kernels) against the textbook Pillow one."""
    recipe = Recipe(crop_size=crop, resize_size=resize, interpolation=interpolation)
    img = _photo_resized("dog1.jpg", size)
    served, reference = recipe_pixels(img, recipe).int(), reference_pixels(img, recipe).int()
    assert served.shape == reference.shape == (3, crop, crop)
    diff = (served - reference).abs()
    assert diff.max() <= 5 and diff.float().mean() < 0.3, (diff.max(), diff.float().mean())


@pytest.mark.parametrize("interpolation", ["nearest", "lanczos"])
def test_other_filters_use_pillow_exactly(interpolation):
    recipe = Recipe(crop_size=224, resize_size=256, interpolation=interpolation)
    img = _photo_resized("croco.jpg", (640, 480))
    assert torch.equal(recipe_pixels(img, recipe), reference_pixels(img, recipe))


@pytest.mark.parametrize("kind", ["L", "I;16", "F", "1"])
def test_grayscale_is_resized_as_one_channel_with_the_same_pixels_as_rgb(kind):
    from handlers.request.pixels import image_pixels

    gray = np.asarray(Image.open(IMAGES / "dog2.jpg").convert("L"))
    if kind == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    elif kind == "F":
        img = Image.fromarray(gray.astype(np.float32) / 255, mode="F")
    else:
        img = Image.fromarray(gray).convert(kind)
    data = encoded(img, "TIFF" if kind == "F" else "PNG")
    recipe = Recipe(crop_size=224, resize_size=256, interpolation="bicubic")
    served = image_pixels(data, LIMIT, recipe)
    as_rgb = recipe_pixels(decode_image(data, LIMIT), recipe)  # decode_image gives RGB
    assert served.shape == (3, 224, 224) and torch.equal(served, as_rgb)
