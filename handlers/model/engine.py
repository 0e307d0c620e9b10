"""The engine: runs the network on its device, uint8 batches of the recipe's crop -> float32 logits.

Everything about running the network lives here, so the handler, the benchmarks and the tests
share one implementation:

- at load: TF-'SAME' convolutions padded statically (CPU, handlers/model/padding.py), dynamic
  int8 Linear layers (CPU, opt-in), a frozen TorchScript graph (CPU) or torch.compile, verified
  against the eager model, with eager as the fallback; then a warm-up of every pass shape;
- per batch: normalisation on the device, precision (autocast), passes of at most `chunk`
  images, CPU streams, and out-of-memory splitting.

CPU passes hold at most CPU_CHUNK images: on a CPU a pass of 8 runs slower per image than two
of 4 once the early layers' activations stop fitting in cache (docs/PERFORMANCE.md). A CPU worker
with several torch threads runs a batch of at least one image per thread as that many
single-threaded streams (no OpenMP barrier between operators, so a core taken for a moment by
the frontend or the decoding delays one stream, not every operator); each stream takes the next
chunk as it comes free.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import assert_inference_ready, quantize_linear_int8
from .device import memory_stats, single_threaded_torch
from .graph import MODES, Graph, build_graph, example_inputs, resolve_mode, verification_sizes
from .padding import make_static
from .recipe import Recipe, normalize

logger = logging.getLogger(__name__)
CPU_CHUNK = 4  # images per CPU pass (the batch size that ran fastest per image, docs/PERFORMANCE.md)
PRECISIONS = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs the network; the defaults are what the handler serves with."""

    precision: str = "auto"  # auto: float16 autocast on CUDA, float32 on CPU
    graph: str = "auto"  # auto: frozen on CPU in float32, eager otherwise; or eager/freeze/compile
    int8: bool = False  # CPU: dynamic int8 quantization of nn.Linear layers
    channels_last: bool = True
    static_padding: bool = True  # CPU: TF-'SAME' convolutions padded at the crop size (same logits)
    onednn_fusion: bool = True  # CPU, frozen graphs: oneDNN Graph fusion
    cpu_streams: bool = True  # CPU: a batch of >= 1 image per torch thread runs as single-threaded streams

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"handler setting precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.graph not in MODES:
            raise ValueError(f"handler setting graph must be one of {MODES}, got {self.graph!r}")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on `device`, or None for float32."""
        if self.precision == "auto":
            return torch.float16 if device.type == "cuda" else None
        return None if self.precision == "float32" else getattr(torch, self.precision)


@dataclass(frozen=True)
class Run:
    """One batch through the engine."""

    logits: torch.Tensor  # float32 [N, classes]
    ms: float
    oom_splits: int  # passes halved after running out of memory


class Engine:
    """Prepare at construction; `run(uint8 [N, 3, crop, crop])` -> Run; `describe()` for health."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        device: torch.device,
        batch_size: int,
        options: EngineOptions = EngineOptions(),
    ):
        start = time.perf_counter()
        self.recipe, self.device, self.options = recipe, device, options
        self.batch_size = max(1, batch_size)
        self.cpu = device.type == "cpu"
        self.autocast = options.autocast_dtype(device)
        self.chunk = min(CPU_CHUNK, self.batch_size) if self.cpu else self.batch_size
        self.int8 = options.int8 and self.cpu
        if self.int8:
            model = quantize_linear_int8(model)
        assert_inference_ready(model)
        self.static_padding = self._make_padding_static(model)
        self.graph = self._build_graph(model)
        stream_count = torch.get_num_threads() if self.cpu and options.cpu_streams else 1
        # their own threads, not the decoders': shared, a stream waits behind a 12 MP decode
        self.streams = (
            ThreadPoolExecutor(stream_count, thread_name_prefix="stream", initializer=single_threaded_torch)
            if stream_count > 1
            else None
        )
        self.stream_count = stream_count
        self._lock = threading.Lock()
        self.runs = self.images = self.oom_splits = 0
        self.warmup_ms = self._warm_up_or_fall_back(model)
        self.prepare_ms = round((time.perf_counter() - start) * 1000)

    # -- load time -------------------------------------------------------------------------
    def _make_padding_static(self, model: nn.Module) -> int:
        if not (self.cpu and self.options.static_padding):
            return 0
        try:
            return make_static(model, self.recipe.crop_hw)
        except Exception as exc:  # the model keeps its own padding
            logger.warning("static padding refused: %s", exc)
            return 0

    def _build_graph(self, model: nn.Module) -> Graph:
        mode = resolve_mode(self.options.graph, self.device, self.autocast is not None)
        sizes = verification_sizes(self.chunk) if mode != "eager" else []
        inputs = example_inputs(
            sizes, self.recipe.crop_hw, lambda p: normalize(p, self.recipe), self.options.channels_last, self.device
        )
        graph = build_graph(
            model,
            mode,
            inputs,
            self._precision,
            self.autocast is not None,
            onednn_fusion=self.options.onednn_fusion and self.cpu,
        )
        logger.info("graph: %s (built in %.0f ms) %s", graph.kind, graph.build_ms, graph.note)
        return graph

    def _warm_up_or_fall_back(self, eager: nn.Module) -> int:
        """Warm up; a graph that fails on a shape verification did not cover is replaced by the
        eager model here, before any request reaches it."""
        try:
            return self._warm_up()
        except RuntimeError as exc:
            if self.graph.kind == "eager" or isinstance(exc, torch.OutOfMemoryError):
                raise
            logger.warning("graph: %s graph failed at warm-up, serving eagerly: %s", self.graph.kind, exc)
            self.graph = Graph(eager, "eager", note=f"{self.graph.kind} graph failed at warm-up: {exc}")
            return self._warm_up()

    def _warm_up(self) -> int:
        """Every batch size the worker can be handed, so every pass shape in every thread that
        runs passes: kernels are picked per shape on first use, a frozen graph specialises on
        its second run, a compiled one compiles per shape."""
        start = time.perf_counter()
        for _ in range(1 if self.graph.kind == "eager" else 2):
            for n in range(1, self.batch_size + 1):
                self._passes(self._zeros(n))
        return round((time.perf_counter() - start) * 1000)

    def _zeros(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 3, *self.recipe.crop_hw, dtype=torch.uint8, device=self.device)

    # -- per batch ---------------------------------------------------------------------------
    def run(self, pixels: torch.Tensor) -> Run:
        """uint8 [N, 3, crop, crop] on any device -> float32 logits [N, classes] on the engine's device."""
        start = time.perf_counter()
        if self.device.type == "cuda" and pixels.device != self.device:
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        logits, splits = self._passes(pixels)
        with self._lock:
            self.runs += 1
            self.images += len(pixels)
            self.oom_splits += splits
        return Run(logits, round((time.perf_counter() - start) * 1000, 2), splits)

    def _passes(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The batch in passes of at most `chunk` images, as even as possible -> (logits, OOM
        splits). On the streams, at least one pass per stream, taken as streams come free."""
        parts = -(-len(pixels) // self.chunk)
        on_streams = self.streams is not None and len(pixels) >= self.stream_count
        if on_streams:
            parts = max(parts, self.stream_count)
        chunks = torch.tensor_split(pixels, parts)
        results = list(self.streams.map(self._pass, chunks) if on_streams else map(self._pass, chunks))
        return torch.cat([r[0] for r in results]), sum(r[1] for r in results)

    def _precision(self):
        # No autocast context at all when off: compiled graphs are guarded on it.
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
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
            (a, sa), (b, sb) = self._pass(pixels[:half]), self._pass(pixels[half:])
            return torch.cat([a, b]), 1 + sa + sb

    def describe(self) -> dict:
        """The engine's part of the health report."""
        return {
            "device": str(self.device),
            "dtype": str(self.autocast or torch.float32).replace("torch.", ""),
            "autocast": self.autocast is not None,
            "graph": self.graph.kind,
            "graph_note": self.graph.note,
            "chunk_size": self.chunk,
            "cpu_streams": self.stream_count if self.streams else None,
            "static_padding_convs": self.static_padding,
            "int8_linear": self.int8,
            "torch_threads": torch.get_num_threads() if self.cpu else None,
            "prepare_ms": self.prepare_ms,
            "warmup_ms": self.warmup_ms,
            "batches_run": self.runs,
            "images_run": self.images,
            "oom_batch_splits": self.oom_splits,
            **memory_stats(self.device),
        }
