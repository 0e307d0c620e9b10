"""The preprocessing recipe that travels with a model: sizes, crop mode, interpolation, mean and std."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
# timm's eval crop modes (timm.data.transforms_factory.transforms_imagenet_eval):
# center: the short side to resize_size (each side, for [H, W] sizes), then a center crop;
# squash: both sides to resize_size, aspect ratio not kept, then a center crop;
# border: the long side to resize_size, aspect kept, then a center crop padded with the mean.
CROP_MODES = ("center", "squash", "border")


def _hw(size) -> tuple[int, int] | None:
    """An int or [H, W] of positive ints -> (H, W); None for anything else."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        return int(size[0]), int(size[1])
    return None


@dataclass(frozen=True)
class Recipe:
    """Resize (by `crop_mode`) to `resize_size`, center-crop `crop_size`, then (x/255 - mean) / std.
    Sizes are an int (square) or [H, W]."""

    crop_size: int | list = 224
    resize_size: int | list = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_mode: str = "center"

    def __post_init__(self):
        crop, resize = _hw(self.crop_size), _hw(self.resize_size)
        if crop is None:
            raise ValueError(f"recipe crop_size must be a positive integer or [H, W], got {self.crop_size!r}")
        if resize is None or resize[0] < crop[0] or resize[1] < crop[1]:
            raise ValueError(
                f"recipe resize_size must be an integer or [H, W] >= crop_size ({self.crop_size}), "
                f"got {self.resize_size!r}"
            )
        for name, (h, w) in (("crop_size", crop), ("resize_size", resize)):  # one spelling: an int when square
            object.__setattr__(self, name, h if h == w else [h, w])
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"recipe crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"recipe interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"recipe {name} must be three finite numbers, got {value!r}")
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"recipe std must be positive, got {self.std!r}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        return _hw(self.crop_size)

    @property
    def resize_hw(self) -> tuple[int, int]:
        return _hw(self.resize_size)

    @property
    def fill(self) -> list[int]:
        """The border mode's padding: the mean colour, as timm pads."""
        return [round(255 * v) for v in self.mean]

    def to_dict(self) -> dict:
        """Plain types only, so the recipe survives torch.load(weights_only=True)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown recipe keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_timm_config(cls, cfg: dict) -> Recipe:
        """timm's pretrained config (input_size, crop_pct, crop_mode, interpolation, mean, std)
        as a recipe, with timm's eval arithmetic: resize = floor(crop / crop_pct) per side."""
        h, w = (int(v) for v in cfg["input_size"][-2:])
        pct = float(cfg.get("crop_pct") or 0.875)
        rh, rw = math.floor(h / pct), math.floor(w / pct)
        return cls(
            crop_size=h if h == w else [h, w],
            resize_size=rh if (h, rh) == (w, rw) else [rh, rw],
            interpolation=cfg.get("interpolation") or "bicubic",
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_mode=cfg.get("crop_mode") or "center",
        )

    @classmethod
    def from_torchvision_weights(cls, weights) -> Recipe:
        """A torchvision weights enum's eval transform (ImageClassification) as a recipe."""
        t = weights.transforms()
        crop, resize = list(t.crop_size), list(t.resize_size)
        if len(resize) != 1:
            raise ValueError(f"{weights}: resize_size {resize} is not a short-side size")
        return cls(
            crop_size=crop[0] if len(crop) == 1 or crop[0] == crop[1] else crop,
            resize_size=resize[0],
            interpolation=t.interpolation.value,
            mean=tuple(t.mean),
            std=tuple(t.std),
        )


def normalize(batch: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 (x / 255 - mean) / std, on the batch's device."""
    mean = torch.tensor(recipe.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().div_(255.0) - mean).div_(std)
