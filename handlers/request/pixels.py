"""Decoded pixels -> the recipe's uint8 tensor [3, crop, crop]: what the handler serves."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ..model.recipe import Recipe
from .budget import DecodeBudget
from .decoding import draft_jpeg, jpeg_tensor, load_rgb, open_image

_INTERPOLATION = {
    "nearest": F.InterpolationMode.NEAREST,
    "bilinear": F.InterpolationMode.BILINEAR,
    "bicubic": F.InterpolationMode.BICUBIC,
    "lanczos": F.InterpolationMode.LANCZOS,
}


def image_pixels(data: bytes, max_pixels: int, recipe: Recipe, draft: bool = True,
                 torchcodec: bool = True, budget: DecodeBudget | None = None) -> torch.Tensor:
    """Encoded image -> the recipe's uint8 tensor [3, crop, crop]: what the handler serves.

    JPEGs that DCT scaling would not shrink (a side under twice the resize size) and whose
    recipe resizes as tensors are decoded by TorchCodec straight into a tensor: the same pixels
    as Pillow's, without Pillow's copy into the tensor, which holds the GIL (handlers/request/decoding.py).
    Everything else, anything TorchCodec refuses, and everything when `torchcodec` is False
    takes Pillow's path, whose checks and error messages stay the only ones a client sees.
    With `budget`, the pixels to decode (after DCT scaling) are held from it while decoding.
    """
    img = open_image(data, max_pixels)
    size = img.size
    if draft:
        draft_jpeg(img, recipe.resize_size)
    with budget.hold(img.size[0] * img.size[1]) if budget else nullcontext():
        if torchcodec and img.size == size and recipe.interpolation in TENSOR_RESIZE:
            pixels = jpeg_tensor(img, data)
            if pixels is not None:
                return _resize_crop(pixels, recipe)
        return recipe_pixels(load_rgb(img, max_pixels, keep_gray=recipe.interpolation in TENSOR_RESIZE), recipe)


def tensor_pixels(pixels: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 [3, H, W] pixels a client decoded itself -> the recipe's [3, crop, crop]."""
    if recipe.interpolation in TENSOR_RESIZE:
        return _resize_crop(pixels, recipe)
    return reference_pixels(F.to_pil_image(pixels), recipe)


MAX_ASPECT = 4  # longer panoramas are center-cropped to 4:1 first (same output, bounded memory)


# Resized as uint8 tensors by torch's antialiased SIMD kernels: within 5 levels of Pillow's
# resize, mean difference < 0.3 (tests/test_pixels.py); other interpolations go through Pillow.
TENSOR_RESIZE = ("bilinear", "bicubic")


def recipe_pixels(img: Image.Image, recipe: Recipe) -> torch.Tensor:
    """RGB (or L) image -> uint8 tensor [3, crop, crop]: short side to resize_size, center crop.
    A grayscale image is resized as its one channel, then repeated: the same pixels as resizing
    its RGB form (each channel is resized alike), at a third of the memory."""
    if recipe.interpolation not in TENSOR_RESIZE:
        return reference_pixels(img if img.mode == "RGB" else img.convert("RGB"), recipe)
    # cropped before the copy into a tensor, which then shares Pillow's HWC layout: channels-last
    pixels = _resize_crop(F.pil_to_tensor(_limit_aspect(img)), recipe)
    return pixels.expand(3, -1, -1).contiguous() if pixels.shape[0] == 1 else pixels


def _resize_crop(pixels: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 [3, H, W] -> [3, crop, crop] with torch's antialiased resize, then center crop."""
    left, top, right, bottom = _aspect_box(pixels.shape[-1], pixels.shape[-2])
    pixels = F.resize(pixels[:, top:bottom, left:right], recipe.resize_size,
                      interpolation=_INTERPOLATION[recipe.interpolation], antialias=True)
    return F.center_crop(pixels, [recipe.crop_size, recipe.crop_size]).contiguous()


def reference_pixels(img: Image.Image, recipe: Recipe) -> torch.Tensor:
    """The textbook pipeline on a PIL image: torchvision resize (Pillow), then center crop."""
    img = _limit_aspect(img)
    img = F.resize(img, recipe.resize_size, interpolation=_INTERPOLATION[recipe.interpolation])
    img = F.center_crop(img, [recipe.crop_size, recipe.crop_size])
    return F.pil_to_tensor(img)


def _limit_aspect(img: Image.Image) -> Image.Image:
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
