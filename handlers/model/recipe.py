"""The preprocessing recipe that travels with a model: sizes, interpolation, mean and std."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Recipe:
    """Resize the short side to `resize_size`, center-crop `crop_size`, then (x/255 - mean) / std."""

    crop_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if not (isinstance(self.crop_size, int) and self.crop_size > 0):
            raise ValueError(f"recipe crop_size must be a positive integer, got {self.crop_size!r}")
        if not (isinstance(self.resize_size, int) and self.resize_size >= self.crop_size):
            raise ValueError(
                f"recipe resize_size must be an integer >= crop_size ({self.crop_size}), "
                f"got {self.resize_size!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"recipe interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"recipe {name} must be three finite numbers, got {value!r}")
            object.__setattr__(self, name, value)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"recipe std must be positive, got {self.std!r}")

    def to_dict(self) -> dict:
        """Plain types only, so the recipe survives torch.load(weights_only=True)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown recipe keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_timm_config(cls, cfg: dict) -> "Recipe":
        """timm's pretrained config (input_size, crop_pct, interpolation, mean, std) as a recipe."""
        crop = int(cfg["input_size"][-1])
        return cls(
            crop_size=crop,
            resize_size=int(math.floor(crop / float(cfg.get("crop_pct", 0.875)))),
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
        )

def normalize(batch: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 (x / 255 - mean) / std, on the batch's device."""
    mean = torch.tensor(recipe.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().div_(255.0) - mean).div_(std)
