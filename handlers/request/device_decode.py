"""JPEGs of a batch decoded in one call on the engine's device (nvJPEG on CUDA), then resized and
cropped there; everything the batched decoder cannot take goes back to the per-image CPU path.

Per image: the header is read and the pixel limit checked by Pillow first (open_image), as on
the CPU path; only baseline-decodable JPEGs in RGB or grayscale go to the device, with their EXIF
orientation read from the header and applied to the tensor (the device decoder ignores it). A
batch the decoder refuses is retried image by image, so one bad file costs only itself. Every
step that fails for one image (its EXIF, its decode, its resize, the device's memory) hands that
image back to the CPU path, whose checks and messages are the ones a client sees.

Off by default (the handler setting `device_decode`): it has not yet been measured to pay on a
GPU (scripts/gpu_bench.py times it beside the CPU path).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from ..model.recipe import Recipe
from .decoding import JPEG_MODES, open_image
from .errors import InputError
from .pixels import resize_crop, resizes_as_tensor

logger = logging.getLogger(__name__)
EXIF_ORIENTATION = 0x0112
CALL_PIXELS = 200_000_000  # pixels decoded per call at most (600 MB of RGB on the device)

# EXIF orientation -> the tensor operation that shows the image upright, [C, H, W] (as PIL's
# ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
# 7 transverse, 8 rotate 90 counter-clockwise).
_UPRIGHT = {
    2: lambda t: t.flip(-1),
    3: lambda t: t.flip(-2, -1),
    4: lambda t: t.flip(-2),
    5: lambda t: t.transpose(-2, -1),
    6: lambda t: torch.rot90(t, -1, dims=(-2, -1)),
    7: lambda t: t.transpose(-2, -1).flip(-2, -1),
    8: lambda t: torch.rot90(t, 1, dims=(-2, -1)),
}


def device_candidate(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(EXIF orientation 1-8, pixels) of a JPEG the device decoder can take, else None. Raises
    the CPU path's InputError for a header over the pixel limit or unreadable."""
    img = open_image(data, max_pixels)
    if img.format not in ("JPEG", "MPO") or img.mode not in JPEG_MODES:
        return None
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block: the CPU path decodes it or says why not
        return None
    orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    return orientation, img.size[0] * img.size[1]


def decode_batch(images: list, recipe: Recipe, device: torch.device, max_pixels: int, decode_on_cpu) -> list:
    """Every image of a batch -> what `decode_on_cpu(images)` would give for it: the encoded
    JPEGs the device decoder takes are decoded on `device`; the rest (pixel tensors, other
    formats, anything the device path fails on, all of them if it fails as a whole) by
    `decode_on_cpu`, which maps a list of images to their results."""
    encoded = [i for i, image in enumerate(images) if not isinstance(image, torch.Tensor)]
    try:
        on_device = decode_on_device([images[i] for i in encoded], recipe, device, max_pixels)
    except Exception:
        logger.exception("decoding on %s failed; the batch decodes on the CPU", device)
        on_device = [None] * len(encoded)
    out = {i: result for i, result in zip(encoded, on_device) if result is not None}
    rest = [i for i in range(len(images)) if i not in out]
    out.update(zip(rest, decode_on_cpu([images[i] for i in rest])))
    return [out[i] for i in range(len(images))]


def decode_on_device(
    images: list[bytes], recipe: Recipe, device: torch.device, max_pixels: int
) -> list[torch.Tensor | InputError | None]:
    """Per image: uint8 [3, crop, crop] on `device`, the InputError its header gives, or None
    for the CPU path (not a JPEG, CMYK, refused by the device decoder, or a recipe that
    resizes with Pillow)."""
    out: list = [None] * len(images)
    if not resizes_as_tensor(recipe, fast=True):  # on the device only with `pixels: fast`
        return out
    calls, todo, budget = [[]], {}, 0
    for i, data in enumerate(images):
        try:
            candidate = device_candidate(data, max_pixels)
        except InputError as err:
            out[i] = err
            continue
        except Exception:  # anything else while reading its header: the CPU path decides
            logger.exception("reading a JPEG header for the device decoder failed; the CPU path decodes it")
            continue
        if candidate is None:
            continue
        todo[i], pixels = candidate
        if calls[-1] and budget + pixels > CALL_PIXELS:
            calls.append([])
            budget = 0
        calls[-1].append(i)
        budget += pixels
    for call in calls:  # each call's full-size images are freed once cropped
        for i, pixels in _decode(call, images, device).items():
            try:
                out[i] = resize_crop(_UPRIGHT.get(todo[i], lambda t: t)(pixels), recipe)
            except Exception as exc:  # out of memory among them: this image takes the CPU path
                logger.info("device resize failed for one image (%s); the CPU path decodes it", exc)
    return out


def _decode(indices: list[int], images: list[bytes], device: torch.device) -> dict[int, torch.Tensor]:
    if not indices:
        return {}
    tensors = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in indices]
    try:
        return dict(zip(indices, decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)))
    except Exception as exc:  # one file the decoder refuses (or memory) fails the call: find it
        logger.info("batched JPEG decode refused (%s); decoding %d images one by one", exc, len(indices))
    out = {}
    for i, tensor in zip(indices, tensors):
        with contextlib.suppress(Exception):  # the CPU path decodes it or answers why not
            out[i] = decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)
    return out
