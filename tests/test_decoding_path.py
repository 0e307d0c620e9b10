"""image_pixels on the fast path (`pixels: fast`): JPEG, PNG and WebP go through TorchCodec
where it matches Pillow, everything else through Pillow.

The served pixels must be exactly what Pillow's fast path gives (decode_image + recipe_pixels),
and each input must take the path the docs say it takes. The exact path (the default) is
Pillow's alone: tests/test_recipe_equivalence.py holds it to timm's transform.
"""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.model.recipe import Recipe
from handlers.request import decoding as jpeg
from handlers.request.decoding import decode_image, over_white
from handlers.request.errors import InputError
from handlers.request.pixels import image_pixels, recipe_pixels
from tests.conftest import IMAGES, jpeg_bytes

LIMIT = 50_000_000
RECIPE = Recipe(crop_size=224, resize_size=256, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
PHOTOS = sorted(IMAGES.glob("*.jpg"))


def pillow_pixels(data: bytes, recipe: Recipe = RECIPE, draft: bool = True) -> torch.Tensor:
    return recipe_pixels(decode_image(data, LIMIT, recipe.resize_size if draft else None), recipe, fast=True)


def photo(name, size=None, **save) -> bytes:
    img = Image.open(name).convert("RGB")
    return jpeg_bytes(img.resize(size, Image.BICUBIC) if size else img, quality=90, **save)


@pytest.mark.parametrize(
    "fmt, mode, decoder",
    [("JPEG", "RGB", False), ("PNG", "RGB", True), ("PNG", "RGBA", True), ("PNG", "L", True), ("PNG", "LA", True),
     ("WEBP", "RGB", True), ("WEBP", "RGBA", True)],
)  # fmt: skip
@pytest.mark.parametrize("mode_of_crop", ["center", "border"])
def test_the_exact_path_gives_pillows_pixels(fmt, mode, decoder, mode_of_crop, torchcodec_calls):
    """The default path: Pillow's resize of Pillow's pixels; PNG and WebP decoded by TorchCodec
    (one buffer) and resized plane by plane give exactly those; JPEGs are Pillow's alone."""
    img = Image.open(PHOTOS[0]).convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    buf = io.BytesIO()
    img.convert(mode).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" and mode == "RGBA" else {}))
    recipe = Recipe(crop_size=224, resize_size=256, interpolation="bicubic", crop_mode=mode_of_crop)
    served = image_pixels(buf.getvalue(), LIMIT, recipe)
    assert bool(torchcodec_calls) == decoder
    assert torch.equal(served, recipe_pixels(decode_image(buf.getvalue(), LIMIT), recipe))


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
@pytest.mark.parametrize("size", [None, (500, 375), (375, 500), (700, 1000), (2000, 300)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_real_photos_give_pillows_pixels_exactly(path, size, interpolation, torchcodec_calls):
    data = path.read_bytes() if size is None else photo(path, size)
    recipe = Recipe(crop_size=224, resize_size=256, interpolation=interpolation)
    served = image_pixels(data, LIMIT, recipe, fast=True)
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
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))
    assert len(torchcodec_calls) == 1


def test_grayscale_and_progressive_jpegs(torchcodec_calls):
    gray = jpeg_bytes(Image.open(IMAGES / "croco.jpg").convert("L"))
    progressive = photo(IMAGES / "persons.jpg", progressive=True)
    for data in (gray, progressive):
        assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))
    assert len(torchcodec_calls) == 2


def test_large_jpegs_keep_pillows_draft_decoding(torchcodec_calls):
    data = photo(IMAGES / "bus.jpg", (1620, 2160))  # 1/2 scale still >= 256 on both sides
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))
    assert torchcodec_calls == []
    # without draft decoding the full-size JPEG goes to TorchCodec, with the same pixels as Pillow
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, draft=False, fast=True), pillow_pixels(data, draft=False))
    assert torchcodec_calls == [len(data)]


def encoded(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


@pytest.mark.parametrize("path", PHOTOS[:4], ids=lambda p: p.name)
@pytest.mark.parametrize(
    "fmt, mode, save",
    [
        ("PNG", "RGB", {}),
        ("PNG", "L", {}),
        ("PNG", "RGB", {"optimize": True}),
        ("WEBP", "RGB", {"quality": 80}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "L", {}),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(v) or "-",
)
def test_plain_png_and_webp_go_to_torchcodec_with_pillows_pixels(path, fmt, mode, save, torchcodec_calls):
    data = encoded(Image.open(path).convert(mode), fmt, **save)
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))
    assert torchcodec_calls == [len(data)]


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _cat(mode="RGB", size=(320, 240)) -> Image.Image:
    img = Image.open(IMAGES / "cat.jpg").convert(mode).resize(size)
    if mode == "RGBA":  # a transparent corner: an encoder keeps the alpha channel
        img.paste((0, 0, 0, 0), (0, 0, 40, 40))
    return img


def _animated_webp() -> bytes:
    return encoded(_cat(), "WEBP", save_all=True, append_images=[_cat().rotate(90)], duration=50)


def _apng() -> bytes:
    return encoded(_cat(), "PNG", save_all=True, append_images=[_cat().rotate(90)])


def _png16(channels: int) -> bytes:
    """A 16-bit PNG, RGB (3 channels) or RGBA (4), written by hand: Pillow writes 16 bits only for grayscale."""
    arr = np.random.default_rng(0).integers(0, 65536, (24, 32, channels), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 32, 24, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _png_with_late_exif(orientation: int) -> bytes:
    """A PNG whose eXIf chunk comes after the pixels: no header read shows it."""
    data = encoded(_cat(), "PNG")
    payload = _exif(orientation).tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    return data[:-12] + chunk + data[-12:]  # before IEND


@pytest.mark.parametrize(
    "name, data",
    [
        ("CMYK JPEG", lambda: jpeg_bytes(_cat("CMYK"))),
        ("palette PNG", lambda: encoded(_cat("P"), "PNG")),
        ("RGB PNG with tRNS", lambda: encoded(_cat(), "PNG", transparency=(0, 0, 0))),
        ("16-bit RGB PNG", lambda: _png16(3)),
        ("16-bit RGBA PNG", lambda: _png16(4)),
        ("16-bit PNG", lambda: encoded(Image.fromarray(np.asarray(_cat("L"), np.uint16) * 257), "PNG")),
        ("PNG with EXIF orientation", lambda: encoded(_cat(), "PNG", exif=_exif(6))),
        ("PNG with EXIF after the pixels", lambda: _png_with_late_exif(6)),
        ("animated PNG", _apng),
        ("WebP with EXIF orientation", lambda: encoded(_cat(), "WEBP", exif=_exif(6))),
        ("animated WebP", _animated_webp),
        ("GIF", lambda: encoded(_cat(), "GIF")),
        ("TIFF", lambda: encoded(_cat(), "TIFF")),
        ("BMP", lambda: encoded(_cat(), "BMP")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_what_torchcodec_would_not_match_stays_on_pillow(name, data, torchcodec_calls):
    data = data()
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))
    assert torchcodec_calls == []


@pytest.mark.parametrize(
    "name, data",
    [
        ("RGBA PNG", lambda: encoded(_cat("RGBA"), "PNG")),
        ("gray+alpha PNG", lambda: encoded(_cat("RGBA").convert("LA"), "PNG")),
        ("RGBA WebP", lambda: encoded(_cat("RGBA"), "WEBP")),
        ("lossless RGBA WebP", lambda: encoded(_cat("RGBA"), "WEBP", lossless=True)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_alpha_png_and_webp_are_composited_over_white_as_pillow_does(name, data, torchcodec_calls):
    data = data()
    assert Image.open(io.BytesIO(data)).mode in ("RGBA", "LA")
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))
    assert len(torchcodec_calls) == 1


def test_over_white_is_pillows_composite_for_every_value_and_alpha():
    v = np.arange(256, dtype=np.uint8)
    every = np.zeros((256, 256, 4), np.uint8)
    every[..., :3] = v[:, None, None]
    every[..., 3] = v[None, :]
    expected = np.asarray(decode_image(encoded(Image.fromarray(every, "RGBA"), "PNG"), LIMIT))
    ours = over_white(torch.from_numpy(every).permute(2, 0, 1))
    assert ours.shape == (3, 256, 256) and np.array_equal(ours.permute(1, 2, 0).numpy(), expected)


def test_png_exif_after_the_pixels_is_still_applied():
    rotated = _png_with_late_exif(6)
    assert image_pixels(rotated, LIMIT, RECIPE, fast=True).shape == (3, 224, 224)
    assert decode_image(rotated, LIMIT).size == (240, 320)  # portrait: the orientation was applied


@pytest.mark.parametrize("interpolation", ["nearest", "lanczos"])
def test_pillow_only_filters_stay_on_pillow(interpolation, torchcodec_calls):
    recipe = Recipe(crop_size=224, resize_size=256, interpolation=interpolation)
    data = photo(IMAGES / "dog.jpg")
    assert torch.equal(image_pixels(data, LIMIT, recipe, fast=True), pillow_pixels(data, recipe))
    assert torchcodec_calls == []


def test_truncated_jpeg_gets_pillows_error(torchcodec_calls):
    data = photo(IMAGES / "dog.jpg")
    with pytest.raises(InputError) as err:
        image_pixels(data[: len(data) // 2], LIMIT, RECIPE, fast=True)
    assert (err.value.code, err.value.type) == (400, "corrupt_image")
    assert "truncated" in err.value.message
    assert len(torchcodec_calls) == 1  # TorchCodec refused it; Pillow's check answered


def test_pixel_limit_is_checked_before_torchcodec(torchcodec_calls):
    data = photo(IMAGES / "dog.jpg")
    with pytest.raises(InputError) as err:
        image_pixels(data, 640 * 480 - 1, RECIPE, fast=True)
    assert (err.value.code, err.value.type) == (413, "too_many_pixels")
    assert torchcodec_calls == []


def test_without_torchcodec_pillow_decodes_everything(monkeypatch):
    monkeypatch.setattr(jpeg, "decode_jpeg", None)
    data = photo(IMAGES / "kitten.jpg", (500, 375))
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))


def test_mpo_phone_photo_gives_its_first_frame(torchcodec_calls):
    first = Image.open(IMAGES / "dog.jpg").convert("RGB")
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[first.rotate(90)])
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, fast=True), pillow_pixels(data))
    assert len(torchcodec_calls) == 1


def test_switched_off_pillow_decodes_everything(torchcodec_calls):
    data = photo(IMAGES / "kitten.jpg", (500, 375))
    assert torch.equal(image_pixels(data, LIMIT, RECIPE, torchcodec=False, fast=True), pillow_pixels(data))
    assert torchcodec_calls == []


def _damaged(data: bytes, seed: int) -> list[bytes]:
    """Truncations at 5% steps and just short of the end, and copies with 1-4 random bytes changed."""
    rng = np.random.default_rng(seed)
    out = [data[: len(data) * k // 20] for k in range(1, 20)] + [data[:-1], data[:-12]]
    for _ in range(40):
        d = bytearray(data)
        for i in rng.integers(0, len(d), rng.integers(1, 5)):
            d[i] = int(rng.integers(0, 256))
        out.append(bytes(d))
    return out


@pytest.mark.parametrize(
    "fmt, mode, save",
    [("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("WEBP", "RGB", {"quality": 80}), ("WEBP", "RGBA", {"lossless": True})],
)
def test_damaged_png_and_webp_get_the_same_answer_with_or_without_torchcodec(fmt, mode, save):
    def outcome(data, torchcodec):
        try:
            return image_pixels(data, LIMIT, RECIPE, torchcodec=torchcodec, fast=True)
        except InputError as err:
            return err.code, err.type

    for i, data in enumerate(_damaged(encoded(_cat(mode), fmt, **save), seed=len(fmt) + len(mode))):
        ours, pillows = outcome(data, True), outcome(data, False)
        if isinstance(ours, torch.Tensor) and isinstance(pillows, torch.Tensor):
            assert torch.equal(ours, pillows), f"variant {i}: other pixels"
        else:
            assert ours == pillows, (
                f"variant {i}: {ours if isinstance(ours, tuple) else 'pixels'} against Pillow's "
                f"{pillows if isinstance(pillows, tuple) else 'pixels'}"
            )
