"""The engine: runs the network on its device, uint8 batches of the recipe's crop -> float32 logits.

One object for the handler, the benchmarks and the tests, whatever runs the network: a backend
(PyTorch, ONNX Runtime or OpenVINO: handlers/model/torch_backend.py, onnx_backends.py; which one
is chosen at load by handlers/model/selection.py) runs one pass; the engine cuts a batch into
passes, runs them on its streams, warms every pass shape up and counts what it ran.

CPU passes hold at most CPU_CHUNK images: on a CPU a pass of 8 runs slower per image than two
of 4 once the early layers' activations stop fitting in cache (docs/PERFORMANCE.md). A CPU
backend with several threads runs a batch of at least one image per stream as that many
single-threaded passes at once (no barrier between operators, so a core taken for a moment by
the frontend or the decoding delays one stream, not every operator); each stream takes the next
chunk as it comes free.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from .device import memory_stats
from .graph import MODES
from .recipe import Recipe
from .torch_backend import TorchBackend

logger = logging.getLogger(__name__)
CPU_CHUNK = 4  # images per CPU pass (the batch size that ran fastest per image, docs/PERFORMANCE.md)
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "float32", "float16", "bfloat16", "int8")
REDUCED = ("float16", "bfloat16", "int8")  # change answers: served only with the archive's evidence


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs the network; the defaults are what the handler serves with."""

    backend: str = "auto"  # auto: the fastest verified of those available; or torch, onnxruntime, openvino
    precision: str = "auto"  # auto = float32; reduced ones only where the archive's verification set allows
    graph: str = "auto"  # torch: frozen on CPU in float32, eager otherwise; or eager/freeze/compile
    int8: bool = False  # torch on CPU: dynamic int8 quantization of nn.Linear layers
    channels_last: bool = True  # torch
    static_padding: bool = True  # torch on CPU: TF-'SAME' convolutions padded at the crop size (same logits)
    onednn_fusion: bool = True  # torch on CPU, frozen graphs: oneDNN Graph fusion
    cpu_streams: bool = True  # CPU: a batch of >= 1 image per thread runs as single-threaded streams

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"handler setting backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"handler setting precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.graph not in MODES:
            raise ValueError(f"handler setting graph must be one of {MODES}, got {self.graph!r}")

    def torch_precision(self, device: torch.device) -> str:
        """The precision a torch-only engine runs at: the setting, float32 for `auto` (the float32
        answers are the default everywhere; int8 runs on the ONNX backends only)."""
        if self.precision in ("auto", "int8"):
            return "float32"
        return self.precision

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype of a torch-only engine on `device`, or None for float32."""
        return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.torch_precision(device)]

    def streams(self, device: torch.device, threads: int) -> int:
        return threads if device.type == "cpu" and self.cpu_streams else 1


@dataclass(frozen=True)
class Run:
    """One batch through the engine."""

    logits: torch.Tensor  # float32 [N, classes]
    ms: float
    oom_splits: int  # passes halved after running out of memory


class Engine:
    """`run(uint8 [N, 3, crop, crop])` -> Run; `describe()` for health. Built from an nn.Module
    (run by torch, as `options` say) or from any backend; warmed up unless `warm_up` is False."""

    def __init__(
        self,
        model,
        recipe: Recipe,
        device: torch.device,
        batch_size: int,
        options: EngineOptions = EngineOptions(),
        warm_up: bool = True,
    ):
        start = time.perf_counter()
        self.recipe, self.device, self.options = recipe, device, options
        self.batch_size = max(1, batch_size)
        self.chunk = min(CPU_CHUNK, self.batch_size) if device.type == "cpu" else self.batch_size
        if isinstance(model, nn.Module):
            model = TorchBackend(model, recipe, device, options.torch_precision(device), self.chunk, options)
        self.backend = model
        # their own threads, not the decoders': shared, a stream would wait behind a 12 MP decode
        self.stream_count = model.streams
        self.streams = (
            ThreadPoolExecutor(model.streams, thread_name_prefix="stream", initializer=model.stream_initializer)
            if model.streams > 1
            else None
        )
        self._lock = threading.Lock()
        self.runs = self.images = self.oom_splits = 0
        self.warmup_ms = self.warm_up() if warm_up else None
        self.prepare_ms = round((time.perf_counter() - start) * 1000)

    @property
    def graph(self):
        """The torch backend's graph (the module it runs and how it was built)."""
        return self.backend.graph

    @property
    def autocast(self) -> torch.dtype | None:
        return getattr(self.backend, "autocast", None)

    def warm_up(self) -> int:
        """Every batch size the worker can be handed, so every pass shape in every stream thread:
        kernels are picked per shape on first use, a frozen graph specialises on its second run,
        a compiled one compiles per shape. A torch graph that fails here on a shape its
        verification did not cover is replaced by the eager model, before any request reaches it."""
        start = time.perf_counter()
        try:
            self._warm_up()
        except RuntimeError as exc:
            if not self.backend.fall_back(exc):
                raise
            self._warm_up()
        self.warmup_ms = round((time.perf_counter() - start) * 1000)
        return self.warmup_ms

    def _warm_up(self) -> None:
        for _ in range(self.backend.warm_up_runs):
            for n in range(1, self.batch_size + 1):
                self._passes(self.zeros(n))

    def zeros(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 3, *self.recipe.crop_hw, dtype=torch.uint8, device=self.device)

    def run(self, pixels: torch.Tensor) -> Run:
        """uint8 [N, 3, crop, crop] on any device -> float32 logits [N, classes]."""
        start = time.perf_counter()
        if self.device.type == "cuda" and pixels.device != self.device and self.backend.name == "torch":
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
        run = self.backend.run
        results = list(self.streams.map(run, chunks) if on_streams else map(run, chunks))
        return torch.cat([r[0] for r in results]), sum(r[1] for r in results)

    def close(self) -> None:
        if self.streams is not None:
            self.streams.shutdown(wait=False)

    def describe(self) -> dict:
        """The engine's part of the health report."""
        return {
            "backend": self.backend.name,
            "precision": self.backend.precision,
            "device": str(self.device),
            "dtype": self.backend.precision,
            **self.backend.describe(),
            "chunk_size": self.chunk,
            "cpu_streams": self.stream_count if self.streams else None,
            "torch_threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "prepare_ms": self.prepare_ms,
            "warmup_ms": self.warmup_ms,
            "batches_run": self.runs,
            "images_run": self.images,
            "oom_batch_splits": self.oom_splits,
            **memory_stats(self.device),
        }
