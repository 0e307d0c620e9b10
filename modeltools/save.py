"""Writers of the formats the handler reads (handlers/model/checkpoint.py, programs.py).

Offline tooling: used by the scripts and tests, not shipped in the .mar.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from handlers.model.checkpoint import FORMAT
from handlers.model.programs import META
from handlers.model.recipe import Recipe


def save_checkpoint(path, state_dict: dict, architecture: str, recipe: Recipe, labels, version: str) -> None:
    """Write one dict of plain types and tensors, loadable with torch.load(weights_only=True)."""
    labels = [str(x) for x in labels]
    torch.save(
        {
            "format": FORMAT,
            "architecture": architecture,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
            "recipe": recipe.to_dict(),
            "labels": labels,
            "version": str(version),
        },
        path,
    )


def metadata(info) -> str:
    return json.dumps(info.to_dict())


def save_torchscript(module: nn.Module, example: torch.Tensor, path, info) -> nn.Module:
    scripted = torch.jit.trace(module, example)
    torch.jit.save(scripted, str(path), _extra_files={META: metadata(info)})
    return scripted


def save_exported(module: nn.Module, example: torch.Tensor, path, info):
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path), extra_files={META: metadata(info)})
    return program
