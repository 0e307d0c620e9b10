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
        raise ValueError(f"no state dict found; top-level keys are {sorted(map(str, obj))[:10]} "
                         f"(looked for {list(STATE_DICT_KEYS)})")
    raise ValueError(f"no state dict found in a {type(obj).__name__}")


def strip_prefixes(state_dict: dict, expected_keys=None) -> dict:
    """Drop 'module.' / '_orig_mod.' / 'model.' prefixes that every key shares (repeatedly)."""
    expected = set(expected_keys or ())
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state_dict and all(k.startswith(prefix) for k in state_dict) and not (expected and set(state_dict) <= expected):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
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


def recipe_for(architecture: str, given: dict | None) -> Recipe:
    """The given recipe, else timm's pretrained config for a timm architecture; never a guess."""
    if given:
        return Recipe.from_dict(given)
    source, _, arch = architecture.rpartition(":")
    if source in ("", "timm"):
        import timm

        if timm.is_model(arch):
            return Recipe.from_timm_config(timm.models.get_pretrained_cfg(arch).to_dict())
    raise ValueError(f"no preprocessing recipe for {architecture}: pass --recipe (JSON with crop_size, "
                     "resize_size, interpolation, mean, std) or a timm architecture")
