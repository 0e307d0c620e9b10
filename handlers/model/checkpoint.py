"""This project's checkpoint format -> an nn.Module in eval mode on a device. Loads are weights_only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .info import ModelInfo
from .programs import PROGRAM_FORMATS, detect_format, load_program

FORMAT = "ts-image-classifier/1"
CONVERT_HINT = (
    "A training checkpoint or a plain state dict is converted first: .venv/bin/python scripts/convert_checkpoint.py "
    "--input {path} --architecture timm:NAME (or torchvision:NAME) --labels labels.txt --output build/my_model.pt"
)


def read_checkpoint(path) -> tuple[dict, ModelInfo]:
    """Load and validate a checkpoint file on the CPU; returns (state_dict, info)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(
            f"{path}: not loadable with torch.load(weights_only=True) ({exc}). Checkpoints must hold "
            "only tensors and plain Python types; arbitrary pickles can run code when loaded."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a {FORMAT} checkpoint (a dict with format={FORMAT!r}, architecture, "
            f"recipe, labels, version and state_dict). {CONVERT_HINT.format(path=path)}"
        )
    if "state_dict" not in ckpt:
        raise ValueError(f"{path}: checkpoint is missing ['state_dict']")
    return ckpt["state_dict"], ModelInfo.from_dict(ckpt, path)


def build_architecture(name: str, num_classes: int) -> nn.Module:
    """'timm:NAME', 'torchvision:NAME' (a bare NAME tries timm, then torchvision), or
    'file:MODULE.py' (TorchServe's eager convention: the one nn.Module class that file defines,
    importable from the model directory), untrained."""
    if name.startswith("file:"):
        return _from_model_file(name[len("file:") :], num_classes)
    source, _, arch = name.rpartition(":")
    if source in ("", "timm"):
        import timm

        if timm.is_model(arch):
            return timm.create_model(arch, pretrained=False, num_classes=num_classes)
        if source == "timm":
            raise ValueError(f"unknown timm architecture {arch!r}")
    if source in ("", "torchvision"):
        import torchvision

        name = arch.partition(".")[0]  # torchvision:ARCH.WEIGHTS names the weights its recipe came from
        if name in torchvision.models.list_models():
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(f"unknown architecture {name!r}: use 'timm:NAME' or 'torchvision:NAME'")


def _from_model_file(file_name: str, num_classes: int) -> nn.Module:
    import importlib
    import inspect

    module = importlib.import_module(Path(file_name).stem)
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, nn.Module) and c.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(
            f"model file {file_name} must define exactly one nn.Module class, found {[c.__name__ for c in classes]}"
        )
    try:
        return classes[0](num_classes=num_classes)
    except TypeError:
        return classes[0]()


def read_info(path, trust_program: bool = False) -> ModelInfo:
    """What a checkpoint or program says about its model, without building the model (a
    program is loaded to read it, so it needs `trust_program` as load_classifier does)."""
    if detect_format(path) == "checkpoint":
        return read_checkpoint(path)[1]
    return load_classifier(path, torch.device("cpu"), trust_program=trust_program)[1]


def load_classifier(
    path, device: torch.device, channels_last: bool = False, trust_program: bool = False
) -> tuple[nn.Module, ModelInfo]:
    """Checkpoint or program file -> (model in eval mode on `device`, info). ValueError on any
    mismatch, and for a program (TorchScript, torch.export) unless `trust_program`: loading one
    runs code from the file."""
    kind = detect_format(path)
    if kind != "checkpoint":
        if not trust_program:
            loader = "torch.jit.load" if kind == "torchscript" else "torch.export.load, which unpickles it"
            raise ValueError(
                f"{path} is a {PROGRAM_FORMATS[kind]} program: loading it runs code from the file ({loader}), "
                "unlike a checkpoint's weights_only load. Archive the checkpoint it was exported from, or pass "
                "--trust-program to build_mar.py if you trust where the file comes from (health then shows "
                "unsafe_source)."
            )
        return load_program(path, kind, device, channels_last)
    state_dict, info = read_checkpoint(path)
    model = build_architecture(info.architecture, num_classes=len(info.labels))
    check_weights_fit(model, state_dict, info, path)
    model.load_state_dict(state_dict, strict=True)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    model.eval().requires_grad_(False)
    return model, info


def check_weights_fit(model: nn.Module, state_dict: dict, info: ModelInfo, path) -> None:
    """ValueError in one line when the weights are not this architecture's with this many labels:
    the label count against the classifier's, or the first tensors that differ."""
    expected = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    wrong = [k for k in expected if k in shapes and shapes[k] != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if not (wrong or missing or unexpected):
        return
    head = [
        k
        for k in wrong
        if shapes[k][:1] != tuple(expected[k].shape)[:1] and tuple(expected[k].shape)[:1] == (len(info.labels),)
    ]
    if wrong and set(wrong) == set(head) and not (missing or unexpected):
        raise ValueError(
            f"{path}: the checkpoint has {len(info.labels)} labels, but its classifier ({head[0]}) "
            f"has {shapes[head[0]][0]} outputs: give one label per class"
        )
    detail = (
        f"{len(wrong)} tensors differ in shape (first: {wrong[0]} is {list(shapes[wrong[0]])} in the file, "
        f"{list(expected[wrong[0]].shape)} in {info.architecture})"
        if wrong
        else ""
    )
    detail += f"{'; ' if detail else ''}{len(missing)} missing (first: {missing[0]})" if missing else ""
    detail += (
        f"{'; ' if detail else ''}{len(unexpected)} not in the architecture (first: {unexpected[0]})"
        if unexpected
        else ""
    )
    raise ValueError(
        f"{path}: the weights are not {info.architecture}'s: {detail}. Is the architecture the one "
        f"the weights were trained with?"
    )


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of nn.Linear layers (CPU); activations stay float."""
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return quantized.eval().requires_grad_(False)


def assert_inference_ready(model: nn.Module) -> None:
    """Refuse a model that would train while serving: any submodule in train mode, any grad."""
    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    if training:
        raise RuntimeError(f"model is not in eval mode; submodules in training mode: {training[:5]}")
    grads = [name for name, p in model.named_parameters() if p.requires_grad]
    if grads:
        raise RuntimeError(f"model parameters require grad: {grads[:5]}")
