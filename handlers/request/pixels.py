"""Decoded pixels -> the recipe's uint8 tensor [3, crop, crop]: what the handler serves."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ..model.recipe import Recipe
from .budget import DecodeBudget
from .decoding import BAND_BYTES, decode_pixels, draft_jpeg, open_image

_INTERPOLATION = {
    "nearest": F.InterpolationMode.NEAREST,
    "bilinear": F.InterpolationMode.BILINEAR,
    "bicubic": F.InterpolationMode.BICUBIC,
    "lanczos": F.InterpolationMode.LANCZOS,
}


def image_pixels(
    data: bytes,
    max_pixels: int,
    recipe: Recipe,
    fast: bool = False,
    budget: DecodeBudget | None = None,
    on_open=None,
    draft: bool = True,
    torchcodec: bool = True,
) -> torch.Tensor:
    """Encoded image -> the recipe's uint8 tensor [3, crop, crop]: what the handler serves.

    Exact (the default): Pillow decodes the whole image and resizes it, the pixels of timm's and
    torchvision's eval transforms. `fast` (the archive's `pixels: fast`, an explicit choice
    measured on its verification set): JPEGs DCT-scaled while decoding (`draft`) to the smallest
    size still resized down and, when the recipe resizes as tensors, images TorchCodec takes
    (`torchcodec`) decoded straight into a tensor (handlers/request/decoding.py) and resized by
    torch; these change a probability by up to a few hundredths on some photos. Whatever the
    path, Pillow's checks and error messages stay the only ones a client sees. With `budget`,
    the pixels to decode (after DCT scaling) are held from it while decoding and resizing.
    `on_open(format, width, height)` learns what the image is as sent, once its header is read.
    """
    img = open_image(data, max_pixels)
    size = img.size
    if on_open is not None:
        on_open(img.format, *size)
    if fast and draft:
        draft_jpeg(img, draft_target(*size, recipe))
    with budget.hold(img.size[0] * img.size[1]) if budget else nullcontext():
        as_tensor = resizes_as_tensor(recipe, fast)
        # exact: PNGs and WebPs decoded by TorchCodec too (the same pixels as Pillow's, in one
        # buffer where Pillow's WebP decoder holds three), then resized by Pillow plane by plane
        planes = not fast and img.format in TENSOR_DECODED_EXACT
        tensor = torchcodec and (as_tensor or planes) and img.size == size
        pixels = decode_pixels(img, data, max_pixels, tensor=tensor, keep_gray=as_tensor or planes)
        if isinstance(pixels, torch.Tensor):
            return _three_channels(resize_crop(pixels, recipe)) if as_tensor else plane_pixels(pixels, recipe)
        return recipe_pixels(pixels, recipe, fast)


TENSOR_DECODED_EXACT = ("PNG", "WEBP")


def plane_pixels(pixels: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 [C, H, W] (C = 3, or 1 for grayscale) -> [3, crop, crop] by Pillow's resize and crop of
    each plane, as an L image over the tensor's own memory: Pillow resizes every channel of an RGB
    image alike, so these are the RGB image's pixels, without an interleaved copy of the whole
    image. A grayscale plane is resized once; each channel is cropped (padded) with its own fill."""
    out, resized = [], None
    for c in range(3):
        if resized is None or len(pixels) == 3:
            img = _limit_aspect(Image.fromarray(pixels[min(c, len(pixels) - 1)].contiguous().numpy()), recipe)
            resized = F.resize(
                img, resize_arg(img.height, img.width, recipe), interpolation=_INTERPOLATION[recipe.interpolation]
            )
        out.append(F.pil_to_tensor(_crop(resized, recipe, fill=recipe.fill[c]))[0])
    return torch.stack(out)


def tensor_pixels(pixels: torch.Tensor, recipe: Recipe, fast: bool = False) -> torch.Tensor:
    """uint8 [3, H, W] pixels a client decoded itself -> the recipe's [3, crop, crop]."""
    if resizes_as_tensor(recipe, fast):
        return resize_crop(pixels, recipe)
    return reference_pixels(F.to_pil_image(pixels), recipe)


MAX_ASPECT = 4  # longer panoramas are center-cropped to 4:1 first (same output, bounded memory)


# Resized as uint8 tensors by torch's antialiased SIMD kernels: within 5 levels of Pillow's
# resize, mean difference < 0.3 (tests/test_pixels.py); other interpolations go through Pillow.
TENSOR_RESIZE = ("bilinear", "bicubic")


def resizes_as_tensor(recipe: Recipe, fast: bool = False) -> bool:
    """On the fast path, center-crop recipes in bilinear or bicubic resize as tensors. Squash and
    border keep the image's edges in the crop, where torch's and Pillow's kernels differ by a
    level or two along the whole edge, so they take Pillow's resize, as the exact path always does."""
    return fast and recipe.interpolation in TENSOR_RESIZE and recipe.crop_mode == "center"


def recipe_pixels(img: Image.Image, recipe: Recipe, fast: bool = False) -> torch.Tensor:
    """RGB (or L) image -> uint8 tensor [3, crop, crop]: short side to resize_size, center crop.
    A grayscale image is resized as its one channel, then repeated: the same pixels as resizing
    its RGB form (each channel is resized alike), at a third of the memory."""
    if not resizes_as_tensor(recipe, fast):
        return reference_pixels(img if img.mode == "RGB" else img.convert("RGB"), recipe)
    # cropped before the copy into a tensor, which then shares Pillow's HWC layout: channels-last
    return _three_channels(resize_crop(pil_tensor(_limit_aspect(img, recipe)), recipe))


def _three_channels(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.expand(3, -1, -1).contiguous() if pixels.shape[0] == 1 else pixels


def pil_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit L or RGB image -> uint8 [C, H, W], a channels-last view of an [H, W, C] tensor, the
    same as torchvision's pil_to_tensor. Copied a band of rows at a time: pil_to_tensor goes
    through `tobytes()`, which holds the whole image twice more (its chunks, then their join)."""
    channels = len(img.getbands())
    w, h = img.size
    out = np.empty((h, w, channels), np.uint8)
    rows = max(1, BAND_BYTES // (w * channels))
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        band = img.crop((0, top, w, bottom)).tobytes()
        out[top:bottom] = np.frombuffer(band, np.uint8).reshape(bottom - top, w, channels)
    return torch.from_numpy(out).permute(2, 0, 1)


def resize_arg(h: int, w: int, recipe: Recipe) -> int | list[int]:
    """What torchvision's resize is given for an H x W image, with timm's eval arithmetic: an
    int (the short side, torchvision's rule for the long one) for center mode at a square size,
    else [H, W]: squash takes resize_size as it is; center at [H, W] matches the short side and
    border the long one, the aspect kept and rounded (timm's ResizeKeepRatio)."""
    rh, rw = recipe.resize_hw
    if recipe.crop_mode == "squash":
        return [rh, rw]
    if recipe.crop_mode == "center" and rh == rw:
        return rh
    pick = max if recipe.crop_mode == "border" else min
    ratio = pick(h / rh, w / rw)
    return [round(h / ratio), round(w / ratio)]


def draft_target(w: int, h: int, recipe: Recipe) -> tuple[int, int]:
    """The (W, H) a JPEG may be DCT-scaled down to and still be resized down, never up."""
    size = resize_arg(h, w, recipe)
    if isinstance(size, int):
        return size, size  # both sides >= the short side's target: the long side is larger still
    return size[1], size[0]


def _crop(image, recipe: Recipe, fill=None):
    """Center crop to crop_size; in border mode the resized image is first padded with the mean
    colour where it is smaller (timm's CenterCropOrPad)."""
    ch, cw = recipe.crop_hw
    if recipe.crop_mode == "border":
        w, h = F.get_size(image)[::-1]
        if cw > w or ch > h:
            pad_w, pad_h = max(cw - w, 0), max(ch - h, 0)
            if fill is None:
                fill = recipe.fill if isinstance(image, torch.Tensor) else tuple(recipe.fill)
            image = F.pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill=fill)
    return F.center_crop(image, [ch, cw])


def resize_crop(pixels: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 [C, H, W] -> [C, crop_h, crop_w] with torch's antialiased resize, then the crop."""
    if recipe.crop_mode == "center":
        left, top, right, bottom = _aspect_box(pixels.shape[-1], pixels.shape[-2])
        pixels = pixels[:, top:bottom, left:right]
    pixels = F.resize(
        pixels,
        resize_arg(pixels.shape[-2], pixels.shape[-1], recipe),
        interpolation=_INTERPOLATION[recipe.interpolation],
        antialias=True,
    )
    return _crop(pixels, recipe).contiguous()


def reference_pixels(img: Image.Image, recipe: Recipe) -> torch.Tensor:
    """The textbook pipeline on a PIL image: torchvision resize (Pillow), then the crop."""
    img = _limit_aspect(img, recipe)
    img = F.resize(img, resize_arg(img.height, img.width, recipe), interpolation=_INTERPOLATION[recipe.interpolation])
    return F.pil_to_tensor(_crop(img, recipe))


def _limit_aspect(img: Image.Image, recipe: Recipe) -> Image.Image:
    if recipe.crop_mode != "center":  # squash and border use the whole image
        return img
    box = _aspect_box(*img.size)
    return img if box == (0, 0, *img.size) else img.crop(box)


def _aspect_box(w: int, h: int) -> tuple[int, int, int, int]:
    # A 20000x10 strip resized to a short side of 256 would be 512 megapixels; the center
    # crop only ever uses the middle, so cut the long side to MAX_ASPECT x the short side.
    keep = MAX_ASPECT * min(w, h)
    if max(w, h) <= keep:
        return 0, 0, w, h
    if w > h:
        left = (w - keep) // 2
        return left, 0, left + keep, h
    top = (h - keep) // 2
    return 0, top, w, top + keep
