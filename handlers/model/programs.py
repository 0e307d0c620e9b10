"""Compiled model programs (TorchScript, torch.export .pt2) with this project's metadata inside.

The metadata (architecture, recipe, labels, version) travels as an extra file `meta.json` in
the program's archive, so a program is served exactly like a checkpoint.
"""

from __future__ import annotations

import json
import zipfile

import torch

from .info import ModelInfo

META = "meta.json"
PROGRAM_FORMATS = {"torchscript": "TorchScript", "export": "torch.export"}


def detect_format(path) -> str:
    """'torchscript', 'export' or 'checkpoint' (torch.save), from the archive's member names."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return "checkpoint"
    if any(n.endswith("/serialized_exported_program.json") or "/models/" in n and n.endswith(".json") for n in names):
        return "export"
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    return "checkpoint"


def _info(text, path) -> ModelInfo:
    """A program's meta.json -> ModelInfo, marked unsafe_source: the program is code."""
    if not text:
        raise ValueError(
            f"{path}: the program carries no {META} (architecture, recipe, labels, version); "
            "write it with scripts/export_model.py"
        )
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: its {META} is not JSON ({exc})") from None
    return ModelInfo.from_dict(meta, path, unsafe_source=True)


def load_program(path, kind: str, device: torch.device, channels_last: bool):
    """A TorchScript or torch.export program -> (module ready for inference on `device`, info).
    Both loaders run code from the file: the caller has checked that the archive trusts it."""
    extra = {META: ""}
    if kind == "torchscript":
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        module.eval()
    else:
        program = torch.export.load(str(path), extra_files=extra)
        refuse_training_graph(program, path)
        module = program.module().to(device)
        for sub in module.modules():  # exported graphs refuse .eval(); the graph was checked above
            sub.training = False
    info = _info(extra[META], path)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module, info


def refuse_training_graph(program, path) -> None:
    """An exported graph traced in train mode keeps batch-norm updates and dropout: refuse it."""
    bad = set()
    for node in program.graph.nodes:
        name = str(node.target)
        if node.op != "call_function" or "no_training" in name:
            continue
        # aten.batch_norm(..., training, ...) at index 5; aten.dropout(input, p, train) at index 2
        flag = 5 if "batch_norm" in name else 2 if "dropout" in name else None
        if flag is not None and len(node.args) > flag and node.args[flag] is True:
            bad.add(name)
    if bad:
        raise ValueError(
            f"{path}: the exported program was traced in training mode ({sorted(bad)[:3]}); "
            "export from a model in eval mode"
        )
