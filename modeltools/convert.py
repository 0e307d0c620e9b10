"""Training checkpoints -> this project's checkpoint: find the weights, strip wrapper prefixes,
read labels, choose the recipe. Pure functions; scripts/convert_checkpoint.py is the command."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from handlers.model.recipe import Recipe

STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "module", "net", "network", "weights")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel/DDP, torch.compile, Lightning-style
UNSAFE_HINT = (
    "it needs arbitrary unpickling, which can run any code hidden in the file. Re-save only the "
    "weights from your training code (torch.save(model.state_dict(), path)), or, if you trust the "
    "file's origin, pass --allow-unsafe-pickle (recorded in the checkpoint as unsafe_source)"
)


def architecture_suggestions(name: str) -> str:
    """'; did you mean ...?' with the nearest timm and torchvision architecture names, or ''."""
    import difflib

    import timm
    import torchvision

    source, _, arch = name.rpartition(":")
    arch = arch.partition(".")[0]
    known = []
    if source in ("", "timm"):
        known += [f"timm:{n}" for n in timm.list_models()]
    if source in ("", "torchvision"):
        known += [f"torchvision:{n}" for n in torchvision.models.list_models()]
    by_arch = {k.rpartition(":")[2]: k for k in known}
    close = difflib.get_close_matches(arch, list(by_arch), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(by_arch[c] for c in close)}?" if close else ""


def load_training_checkpoint(path, allow_unsafe: bool = False):
    """torch.load with weights_only=True; arbitrary unpickling only when explicitly allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not allow_unsafe:
            raise ValueError(f"{path}: refused: {UNSAFE_HINT}. ({type(exc).__name__}: {str(exc)[:200]})") from None
    return torch.load(path, map_location="cpu", weights_only=False)  # opted in: trusted source


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj) -> dict:
    """The weights inside a training checkpoint: a state dict, or one nested under a usual key."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if key in obj:
                return extract_state_dict(obj[key])
        raise ValueError(
            f"no state dict found; top-level keys are {sorted(map(str, obj))[:10]} (looked for {list(STATE_DICT_KEYS)})"
        )
    raise ValueError(f"no state dict found in a {type(obj).__name__}")


def strip_prefixes(state_dict: dict, expected_keys=None) -> dict:
    """Drop 'module.' / '_orig_mod.' / 'model.' prefixes that every key shares (repeatedly)."""
    expected = set(expected_keys or ())
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if (
                state_dict
                and all(k.startswith(prefix) for k in state_dict)
                and not (expected and set(state_dict) <= expected)
            ):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def read_labels(path) -> list[str]:
    """Labels from index_to_name.json ({"0": "cat"} or {"0": ["n0212", "cat"]}), a JSON list, or text lines."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        doc = json.loads(path.read_text())
        if isinstance(doc, list):
            return [str(x) for x in doc]
        indices = sorted(int(k) for k in doc)
        if indices != list(range(len(indices))):
            raise ValueError(f"{path}: indices must run 0..{len(indices) - 1} without gaps")
        return [str(doc[str(i)][-1] if isinstance(doc[str(i)], list) else doc[str(i)]) for i in indices]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def recipe_for(architecture: str, given: dict | None, weights: str | None = None) -> Recipe:
    """The given recipe, else the library's own: timm's pretrained config for `timm:ARCH` or
    `timm:ARCH.TAG` (that tag's sizes, crop_pct and crop mode), the transforms of a torchvision
    weights enum for `torchvision:ARCH.WEIGHTS` (or `weights`); never a guess."""
    if given:
        return Recipe.from_dict(given)
    source, _, arch = architecture.rpartition(":")
    if source in ("", "timm") and not weights:
        import timm

        if timm.is_model(arch):
            try:
                return Recipe.from_timm_config(timm.models.get_pretrained_cfg(arch).to_dict())
            except RuntimeError as exc:  # an unknown tag
                raise ValueError(f"{architecture}: {exc}") from None
    if source in ("", "torchvision"):
        name, _, tag = arch.partition(".")
        if tag or weights:
            return Recipe.from_torchvision_weights(torchvision_weights(name, weights or tag))
    raise ValueError(
        f"no preprocessing recipe for {architecture}: pass --recipe (JSON with crop_size, "
        "resize_size, interpolation, mean, std, crop_mode), a timm architecture, or "
        "torchvision weights (torchvision:resnet50.IMAGENET1K_V2 or --weights IMAGENET1K_V2)"
    )


def torchvision_weights(name: str, tag: str):
    """torchvision's weights enum member `tag` of architecture `name`."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        raise ValueError(f"unknown torchvision architecture {name!r}") from None
    if tag == "DEFAULT":
        return enum.DEFAULT
    if tag not in enum.__members__:
        raise ValueError(f"torchvision {name} has no weights {tag!r}; it has {list(enum.__members__)}")
    return enum[tag]
