"""What a checkpoint or program says about its model besides the weights, checked one way for both."""

from __future__ import annotations

from dataclasses import dataclass

from .recipe import Recipe

FIELDS = ("architecture", "recipe", "labels", "version")


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    recipe: Recipe
    labels: tuple[str, ...]
    version: str
    unsafe_source: bool = False  # loading it could run code: an arbitrary pickle converted, or a program

    @classmethod
    def from_dict(cls, meta: dict, source, unsafe_source: bool = False) -> ModelInfo:
        """A checkpoint's fields or a program's meta.json -> ModelInfo; ValueError naming `source`
        and what is missing or wrong."""
        if not isinstance(meta, dict):
            raise ValueError(f"{source}: the model's metadata must be a mapping of {list(FIELDS)}")
        missing = [k for k in FIELDS if k not in meta]
        if missing:
            raise ValueError(f"{source}: the model's metadata is missing {missing}")
        labels = meta["labels"]
        if not isinstance(labels, (list, tuple)) or not labels:
            raise ValueError(f"{source}: labels must be a non-empty list, one per class")
        if not isinstance(meta["recipe"], dict):
            raise ValueError(f"{source}: recipe must be a mapping (crop_size, resize_size, interpolation, mean, std)")
        try:
            recipe = Recipe.from_dict(meta["recipe"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None
        return cls(
            str(meta["architecture"]),
            recipe,
            tuple(str(x) for x in labels),
            str(meta["version"]),
            unsafe_source or bool(meta.get("unsafe_source", False)),
        )

    def to_dict(self) -> dict:
        """The metadata as plain types (a program's meta.json)."""
        return {
            "architecture": self.architecture,
            "recipe": self.recipe.to_dict(),
            "labels": list(self.labels),
            "version": self.version,
        }
