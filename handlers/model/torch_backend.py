"""The network run by PyTorch: an nn.Module (or a TorchScript / torch.export program) as served.

At load: TF-'SAME' convolutions padded statically (CPU, handlers/model/padding.py), dynamic int8
Linear layers (CPU, opt-in), a frozen TorchScript graph (CPU, float32) or torch.compile, verified
against the eager model, with eager as the fallback. Per pass: normalisation on the device,
precision (autocast), and out-of-memory splitting.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch import nn

from .checkpoint import assert_inference_ready, quantize_linear_int8
from .device import single_threaded_torch
from .graph import Graph, build_graph, example_inputs, resolve_mode, verification_sizes
from .padding import make_static
from .recipe import Recipe, normalize

logger = logging.getLogger(__name__)
AUTOCAST = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TorchBackend:
    """uint8 [N, 3, H, W] on the device -> float32 logits, one pass; `precision` is float32 or an
    autocast dtype's name."""

    name = "torch"

    def __init__(
        self, model: nn.Module, recipe: Recipe, device: torch.device, precision: str, largest_pass: int, options
    ):
        self.recipe, self.device, self.options, self.precision = recipe, device, options, precision
        self.cpu = device.type == "cpu"
        self.autocast = AUTOCAST[precision]
        if device.type == "cuda" and precision == "float32":
            # float32 answers: no TF32 convolutions or matmuls (cuDNN allows TF32 by default)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.int8 = options.int8 and self.cpu
        if self.int8:
            model = quantize_linear_int8(model)
        assert_inference_ready(model)
        self.eager = model
        self.static_padding = self._make_padding_static(model)
        self.graph = self._build_graph(model, largest_pass)
        # single-threaded streams on a CPU with several torch threads: no OpenMP barrier between
        # operators, so a core taken for a moment by the frontend or decoding delays one stream
        self.streams = torch.get_num_threads() if self.cpu and options.cpu_streams else 1
        self.stream_initializer = single_threaded_torch

    def _make_padding_static(self, model: nn.Module) -> int:
        if not (self.cpu and self.options.static_padding):
            return 0
        try:
            return make_static(model, self.recipe.crop_hw)
        except Exception as exc:  # the model keeps its own padding
            logger.warning("static padding refused: %s", exc)
            return 0

    def _build_graph(self, model: nn.Module, largest_pass: int) -> Graph:
        mode = resolve_mode(self.options.graph, self.device, self.autocast is not None)
        sizes = verification_sizes(largest_pass) if mode != "eager" else []
        inputs = example_inputs(
            sizes, self.recipe.crop_hw, lambda p: normalize(p, self.recipe), self.options.channels_last, self.device
        )
        graph = build_graph(
            model, mode, inputs, self._precision, self.autocast is not None,
            onednn_fusion=self.options.onednn_fusion and self.cpu,
        )  # fmt: skip
        logger.info("graph: %s (built in %.0f ms) %s", graph.kind, graph.build_ms, graph.note)
        return graph

    def fall_back(self, exc: Exception) -> bool:
        """A graph that failed on a shape verification did not cover is replaced by the eager
        model; True if there was a graph to replace."""
        if self.graph.kind == "eager" or isinstance(exc, torch.OutOfMemoryError):
            return False
        logger.warning("graph: %s graph failed at warm-up, serving eagerly: %s", self.graph.kind, exc)
        self.graph = Graph(self.eager, "eager", note=f"{self.graph.kind} graph failed at warm-up: {exc}")
        return True

    @property
    def warm_up_runs(self) -> int:
        """Passes per shape to warm up: a frozen graph specialises on its second run."""
        return 1 if self.graph.kind == "eager" else 2

    def _precision(self):
        # No autocast context at all when off: compiled graphs are guarded on it.
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def run(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One forward pass -> (logits, OOM splits); out of memory halves the pass, down to one image."""
        try:
            with torch.inference_mode(), self._precision():
                x = normalize(pixels, self.recipe)
                if self.options.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return self.graph.module(x).float(), 0
        except torch.OutOfMemoryError:
            if len(pixels) == 1:
                raise
            logger.warning("out of memory on a pass of %d images: retrying in halves", len(pixels))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(pixels) // 2
            (a, sa), (b, sb) = self.run(pixels[:half]), self.run(pixels[half:])
            return torch.cat([a, b]), 1 + sa + sb

    def describe(self) -> dict:
        return {
            "autocast": self.autocast is not None,
            "graph": self.graph.kind,
            "graph_note": self.graph.note,
            "static_padding_convs": self.static_padding,
            "int8_linear": self.int8,
        }
