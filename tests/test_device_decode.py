"""Batched device decoding, run on CPU tensors here (CUDA workers run the same functions with
nvJPEG): the same pixels as the CPU path, EXIF orientation applied, and per image a fallback
or its own error, never a failed batch."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from handlers.model.recipe import Recipe
from handlers.request import device_decode
from handlers.request.device_decode import decode_on_device
from handlers.request.errors import InputError
from handlers.request.pixels import image_pixels
from tests.conftest import IMAGES, jpeg_bytes, labelled_photos
from tests.corpus import png_bomb
from tests.handler_harness import run_batch

RECIPE = Recipe(crop_size=224, resize_size=256, interpolation="bicubic")
CPU = torch.device("cpu")
LIMIT = 50_000_000


def cpu_path(data: bytes) -> torch.Tensor:
    return image_pixels(data, LIMIT, RECIPE, draft=False, torchcodec=False, fast=True)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_cpu_paths_pixels(orientation):
    photo = Image.open(IMAGES / "dog1.jpg").convert("RGB").crop((0, 0, 400, 260))  # not square
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg_bytes(photo, quality=95, exif=exif)
    (pixels,) = decode_on_device([data], RECIPE, CPU, LIMIT)
    assert torch.equal(pixels, cpu_path(data))


def test_mixed_batch_each_image_gets_pixels_a_fallback_or_its_error(photos):
    rgb = Image.open(io.BytesIO(photos["croco.jpg"])).convert("RGB")
    png = io.BytesIO()
    rgb.save(png, "PNG")
    images = [
        photos["croco.jpg"],
        png.getvalue(),
        photos["kitten.jpg"][:3000],
        jpeg_bytes(rgb.convert("CMYK")),
        jpeg_bytes(rgb, progressive=True),
        png_bomb(20000, 20000),
        photos["bus.jpg"],
    ]
    out = decode_on_device(images, RECIPE, CPU, LIMIT)
    assert torch.equal(out[0], cpu_path(images[0])) and torch.equal(out[6], cpu_path(images[6]))
    assert out[1] is None and out[3] is None  # a PNG and a CMYK JPEG: the CPU path
    assert out[2] is None  # truncated: the device decoder refuses it, the CPU path answers why
    assert torch.equal(out[4], cpu_path(images[4]))  # progressive
    assert isinstance(out[5], InputError) and out[5].type == "too_many_pixels"


def test_calls_are_bounded_by_pixels(photos, monkeypatch):
    calls = []
    real = device_decode.decode_jpeg

    def counted(tensors, **kwargs):
        calls.append(len(tensors) if isinstance(tensors, list) else 1)
        return real(tensors, **kwargs)

    monkeypatch.setattr(device_decode, "decode_jpeg", counted)
    monkeypatch.setattr(device_decode, "CALL_PIXELS", 1)  # every image its own call
    names = ["dog1.jpg", "dog2.jpg", "cat.jpg"]
    out = decode_on_device([photos[n] for n in names], RECIPE, CPU, LIMIT)
    assert calls == [1, 1, 1] and all(torch.equal(o, cpu_path(photos[n])) for o, n in zip(out, names))


def test_pillow_only_interpolation_leaves_everything_to_the_cpu_path(photos):
    lanczos = Recipe(crop_size=224, resize_size=256, interpolation="lanczos")
    assert decode_on_device([photos["dog1.jpg"]], lanczos, CPU, LIMIT) == [None]


def test_handler_with_device_decoding_answers_like_without(handler, photos, monkeypatch):
    names = ["dog1.jpg", "croco.jpg", "kitten.jpg"]
    items = [{"body": photos[n]} for n in names] + [{"body": b"not an image"}, {"body": photos["bus.jpg"][:2000]}]
    monkeypatch.setattr(handler.core, "device_decode", True)
    answers = run_batch(handler, items)
    assert [a.status for a in answers] == [200, 200, 200, 400, 400]
    for name, answer in zip(names, answers):
        assert answer.body[0]["label"] in labelled_photos()[name]
    assert answers[4].body["type"] == "corrupt_image"


def test_a_jpeg_with_a_jfif_density_and_a_corrupt_exif_block_falls_back_to_the_cpu_path(photos):
    # a byte order mark that is neither II nor MM: Pillow's getexif() raises SyntaxError
    exif = bytes.fromhex(
        "4578696600004d4d0032000000080003010f0002000000060000003201120003000000010006004b8769"
        "000400000001000000380000000043616e6fa9000001900300020000000b0000004a00000000323032303a"
        "30313a30310000"
    )
    good = jpeg_bytes(Image.open(io.BytesIO(photos["dog1.jpg"])).convert("RGB"), dpi=(72, 72), exif=exif)
    with pytest.raises(SyntaxError):
        Image.open(io.BytesIO(good)).getexif()
    assert device_decode.device_candidate(good, LIMIT) is None

    def on_cpu(rest):
        out = []
        for image in rest:
            try:
                out.append(cpu_path(image))
            except InputError as err:
                out.append(err)
        return out

    decoded = device_decode.decode_batch([good, photos["croco.jpg"]], RECIPE, CPU, LIMIT, on_cpu)
    assert isinstance(decoded[0], InputError) and decoded[0].type == "corrupt_image"  # the CPU path's answer
    assert torch.equal(decoded[1], cpu_path(photos["croco.jpg"]))


def test_every_failure_of_the_device_path_hands_its_images_to_the_cpu_path(photos, monkeypatch):
    names = ["dog1.jpg", "croco.jpg"]
    pixels = torch.zeros(3, 10, 10, dtype=torch.uint8)  # a client's own pixels: never for the device
    cpu_calls = []

    def on_cpu(rest):
        cpu_calls.append(len(rest))
        return [cpu_path(i) if isinstance(i, bytes) else "pixels" for i in rest]

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(device_decode, "resize_crop", out_of_memory)  # every device resize fails
    out = device_decode.decode_batch([photos[n] for n in names] + [pixels], RECIPE, CPU, LIMIT, on_cpu)
    assert cpu_calls == [3] and out[2] == "pixels"
    assert all(torch.equal(o, cpu_path(photos[n])) for o, n in zip(out, names))
    monkeypatch.setattr(device_decode, "decode_on_device", out_of_memory)  # the whole device path fails
    out = device_decode.decode_batch([photos[n] for n in names], RECIPE, CPU, LIMIT, on_cpu)
    assert cpu_calls[-1] == 2 and all(torch.equal(o, cpu_path(photos[n])) for o, n in zip(out, names))
