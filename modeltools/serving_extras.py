"""What an archive carries beside its checkpoint so that every backend can serve it: the
reference photos (handlers/model/reference.py) and an ONNX file for ONNX Runtime and OpenVINO
(handlers/model/onnx_backends.py), checked against each other before either is written."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from handlers.model.padding import make_static
from handlers.model.recipe import Recipe, normalize
from handlers.model.reference import ReferenceSet
from handlers.monitoring import channel_means
from handlers.request.pixels import image_pixels
from modeltools.onnx_export import write_onnx

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_REFERENCE_IMAGES = 16  # verification at every worker start: a few photos, all kinds
MAX_PROFILE_IMAGES = 500  # the monitoring profile: as many as given
MAX_PIXELS = 50_000_000


def reference_set(model: nn.Module, recipe: Recipe, folder: Path, profile: Path | None = None) -> ReferenceSet:
    """The photos of `folder`, decoded as served, with the eager float32 model's logits: the first
    MAX_REFERENCE_IMAGES to verify backends on; and the monitoring profile (the per-image channel
    means and top-1 probabilities drift is measured against) over every photo of `profile`
    (default: `folder`), up to MAX_PROFILE_IMAGES."""
    files = image_files(folder)[:MAX_REFERENCE_IMAGES]
    if not files:
        raise ValueError(f"no photos in {folder} to verify the backends with (--reference-images names a folder)")
    pixels = torch.stack([image_pixels(f.read_bytes(), MAX_PIXELS, recipe) for f in files])
    with torch.inference_mode():
        logits = model(normalize(pixels, recipe)).float()
    profile_files = image_files(profile)[:MAX_PROFILE_IMAGES] if profile is not None else files
    means, top1 = [], []
    for start in range(0, len(profile_files), 32):
        part = profile_files[start : start + 32]
        batch = torch.stack([image_pixels(f.read_bytes(), MAX_PIXELS, recipe) for f in part])
        with torch.inference_mode():
            out = model(normalize(batch, recipe)).float()
        means.append(torch.from_numpy(channel_means(batch, recipe.mean, recipe.std)))
        top1.append(torch.softmax(out, 1).max(1).values)
    return ReferenceSet(pixels, logits, tuple(f.name for f in files), torch.cat(means), torch.cat(top1))


def image_files(folder: Path) -> list[Path]:
    """The photos in `folder` and its subfolders (a class per folder is fine), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of photos")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class Normalized(nn.Module):
    """The model with the recipe's normalisation in front: uint8 pixels in, logits out."""

    def __init__(self, model: nn.Module, recipe: Recipe):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(recipe.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(recipe.std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels.float() / 255.0 - self.mean) / self.std)


def export_serving_onnx(model: nn.Module, recipe: Recipe, path: Path, reference: ReferenceSet) -> dict:
    """uint8 [N, 3, H, W] -> logits as ONNX, batch dynamic, TF-'SAME' padding made static first
    (`model` is changed in place); written only if ONNX Runtime gives the reference's top-1 on
    every photo and its probabilities within float32 rounding. Returns the verdict."""
    make_static(model, recipe.crop_hw)
    module = Normalized(model, recipe).eval()
    write_onnx(module, reference.pixels[:2], path, "pixels", "logits")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixels": reference.pixels.numpy()})
    verdict = reference.judge(torch.from_numpy(logits), "float32")
    if not verdict.verified:
        Path(path).unlink()
        raise ValueError(f"the ONNX export does not match the eager model on the reference photos: {verdict.to_dict()}")
    return verdict.to_dict()
