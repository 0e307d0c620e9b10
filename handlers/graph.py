"""How the network runs: eager, a frozen TorchScript graph (CPU), or torch.compile.

`freeze` traces the eager model, freezes it (batch-norm folded into the convolutions,
constants propagated) and keeps it only if it matches the eager model at every batch size
the worker can be handed; anything else falls back to eager with the reason logged. Nothing
here changes what the model computes beyond float rounding.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)
MODES = ("auto", "eager", "freeze", "compile")
# Frozen graphs fold batch norm into the weights; logits move by float rounding only.
RELATIVE_TOLERANCE = 1e-3


@dataclass
class Graph:
    module: nn.Module
    kind: str  # "eager", "frozen", "compiled"
    note: str = ""  # why the requested mode was not used, if it was not
    build_ms: float = 0.0


def resolve_mode(mode: str, device: torch.device, autocast: bool) -> str:
    """`auto`: frozen on CPU without autocast (measured 1.4x eager here), eager elsewhere."""
    if mode not in MODES:
        raise ValueError(f"handler setting graph must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "freeze" if device.type == "cpu" and not autocast else "eager"
    return mode


def build_graph(model: nn.Module, mode: str, inputs: list[torch.Tensor]) -> Graph:
    """The module to serve. `inputs`: one normalised example per batch size to verify."""
    if mode == "eager":
        return Graph(model, "eager")
    start = time.perf_counter()
    if mode == "compile":
        return Graph(torch.compile(model, dynamic=False), "compiled", build_ms=_ms(start))
    try:
        frozen = freeze(model, inputs)
    except Exception as exc:  # the model cannot be traced faithfully: serve it eagerly
        logger.warning("graph: serving eagerly, freezing refused: %s", exc)
        return Graph(model, "eager", note=f"freeze refused: {exc}")
    return Graph(frozen, "frozen", build_ms=_ms(start))


def freeze(model: nn.Module, inputs: list[torch.Tensor]) -> torch.jit.ScriptModule:
    """Trace and freeze `model`; raise ValueError unless it matches eager on every input."""
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        script = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, inputs[-1])
        frozen = torch.jit.freeze(script.eval())
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:  # data-dependent Python in forward(): the trace may not generalise
        raise ValueError(f"tracing warned ({tracer[0].message})")
    with torch.inference_mode():
        for x in inputs:
            check_same(model(x), frozen(x), f"batch of {len(x)}")
    return frozen


def check_same(expected, actual, where: str) -> None:
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        raise ValueError(f"{where}: output shape {getattr(actual, 'shape', type(actual))} != {tuple(expected.shape)}")
    scale = expected.abs().max().clamp(min=1.0)
    diff = (actual.float() - expected.float()).abs().max()
    if not diff <= RELATIVE_TOLERANCE * scale:
        raise ValueError(f"{where}: largest logit difference {diff.item():.3g} exceeds {RELATIVE_TOLERANCE} x {scale.item():.3g}")


def example_inputs(sizes, crop: int, normalize, channels_last: bool, device: torch.device) -> list[torch.Tensor]:
    """Random photos-like inputs, normalised as requests are, one per batch size."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for n in sizes:
        x = normalize(torch.randint(0, 256, (n, 3, crop, crop), dtype=torch.uint8, generator=gen).to(device))
        out.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return out


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
