"""How the network runs: eager, a frozen TorchScript graph (CPU), or torch.compile.

`freeze` traces the eager model, freezes it (batch-norm folded into the convolutions,
constants propagated) and keeps it only if it matches the eager model at 1, 2, half and all of
the largest pass the engine runs; anything else falls back to eager with the reason logged
(and a graph that fails at warm-up on another size is replaced the same way). Nothing
here changes what the model computes beyond float rounding.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)
MODES = ("auto", "eager", "freeze", "compile")
# Logits may move by float rounding only: batch norm folded into weights, fused kernels.
TOLERANCE = {False: 1e-3, True: 2e-2}  # of the largest logit; True: under float16/bfloat16 autocast


@dataclass
class Graph:
    module: nn.Module
    kind: str  # "eager", "frozen", "compiled"
    note: str = ""  # why the requested mode was not used, if it was not
    build_ms: float = 0.0


def resolve_mode(mode: str, device: torch.device, autocast: bool) -> str:
    """`auto`: frozen on CPU without autocast (faster than eager: docs/PERFORMANCE.md), eager elsewhere."""
    if mode == "auto":
        return "freeze" if device.type == "cpu" and not autocast else "eager"
    return mode


def verification_sizes(largest_pass: int) -> list[int]:
    """Pass sizes a frozen or compiled graph is checked against eager at before serving."""
    return sorted({1, min(2, largest_pass), max(1, largest_pass // 2), largest_pass})


def build_graph(
    model: nn.Module,
    mode: str,
    inputs: list[torch.Tensor],
    precision=nullcontext,
    autocast: bool = False,
    onednn_fusion: bool = False,
) -> Graph:
    """The module to serve, checked against `model` on `inputs` (normalised examples, one per
    batch size) under `precision()`, the context requests run in."""
    if mode == "eager":
        return Graph(model, "eager")
    start = time.perf_counter()
    try:
        if mode == "freeze":
            # oneDNN Graph fuses the frozen graph's conv/activation chains on CPU (faster at equal
            # logits: docs/PERFORMANCE.md). A process-wide switch; only for graphs traced here (it
            # failed to compile partitions of a TorchScript program exported elsewhere).
            torch.jit.enable_onednn_fusion(onednn_fusion and not isinstance(model, torch.jit.ScriptModule))
            built = freeze(model, inputs)
        else:
            built = compiled(model, max(len(x) for x in inputs))
        verify(model, built, inputs, precision, TOLERANCE[autocast])
    except Exception as exc:  # the model cannot be traced or compiled faithfully: serve it eagerly
        logger.warning("graph: serving eagerly, %s refused: %s", mode, exc)
        return Graph(model, "eager", note=f"{mode} refused: {exc}")
    return Graph(built, "frozen" if mode == "freeze" else "compiled", build_ms=_ms(start))


def compiled(model: nn.Module, max_batch: int) -> nn.Module:
    """torch.compile with static shapes: one compilation per batch size (at verification and
    warm-up), so dynamo's recompile limit must cover every batch size the worker sees."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * max_batch + 2)
    return torch.compile(model, dynamic=False)


def freeze(model: nn.Module, inputs: list[torch.Tensor]) -> torch.jit.ScriptModule:
    """Trace and freeze `model`; refuse (ValueError) a trace that warned."""
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # no check_trace: verify() compares the frozen graph with the eager model right after
        script = (
            model
            if isinstance(model, torch.jit.ScriptModule)
            else torch.jit.trace(model, inputs[-1], check_trace=False)
        )
        frozen = torch.jit.freeze(script.eval())
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:  # data-dependent Python in forward(): the trace may not generalise
        raise ValueError(f"tracing warned ({tracer[0].message})")
    return frozen


def verify(model: nn.Module, built: nn.Module, inputs: list[torch.Tensor], precision, tolerance: float) -> None:
    """Each input twice: TorchScript's profiling executor optimises (and fuses) on the second run."""
    with torch.inference_mode(), precision():
        for x in inputs:
            expected = model(x)
            for _ in range(2):
                check_same(expected, built(x), f"batch of {len(x)}", tolerance)


def check_same(expected, actual, where: str, tolerance: float = TOLERANCE[False]) -> None:
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        raise ValueError(f"{where}: output shape {getattr(actual, 'shape', type(actual))} != {tuple(expected.shape)}")
    scale = expected.float().abs().max().clamp(min=1.0)
    diff = (actual.float() - expected.float()).abs().max()
    if not diff <= tolerance * scale:
        raise ValueError(
            f"{where}: largest logit difference {diff.item():.3g} exceeds {tolerance} x {scale.item():.3g}"
        )


def example_inputs(
    sizes, crop: int | tuple[int, int], normalize, channels_last: bool, device: torch.device
) -> list[torch.Tensor]:
    """Random photos-like inputs, normalised as requests are, one per batch size."""
    gen = torch.Generator().manual_seed(0)
    out = []
    with torch.inference_mode():  # as served: compiled graphs are guarded on it
        for n in sizes:
            x = normalize(
                torch.randint(
                    0, 256, (n, 3, *((crop, crop) if isinstance(crop, int) else crop)), dtype=torch.uint8, generator=gen
                ).to(device)
            )
            out.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    return out


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)
