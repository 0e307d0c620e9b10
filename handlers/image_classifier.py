"""The TorchServe handler: wires context and settings to the pure stages in this package.

Absolute imports on purpose: in a .mar this file sits at the archive root beside the
`handlers/` package, which TorchServe puts on the worker's PYTHONPATH.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.batch import Batch
from handlers.chunking import (candidate_sizes, in_chunks, in_streams, pick_chunk, stream_parts,
                               time_sizes, time_stream_chunks)
from handlers.checkpoint import assert_inference_ready, load_classifier, quantize_linear_int8
from handlers.device import memory_stats, select_device, single_threaded_torch
from handlers.errors import InputError
from handlers.graph import Graph, build_graph, example_inputs, resolve_mode, verification_sizes
from handlers.imaging import image_pixels, normalize
from handlers.metrics import HandlerMetrics
from handlers.padding import make_static
from handlers.payload import extract_payload, parse_topk
from handlers.predictions import top_k
from handlers.settings import Settings

logger = logging.getLogger(__name__)
TOPK_HEADER = "x-topk"


class ImageClassifier(BaseHandler):
    """Image classification from any checkpoint in this project's format."""

    def initialize(self, context):
        props = context.system_properties
        self.settings = Settings.from_model_yaml(getattr(context, "model_yaml_config", None))
        self.device = select_device(props.get("gpu_id"))
        if self.device.type == "cpu" and self.settings.cpu_threads > 0:
            torch.set_num_threads(self.settings.cpu_threads)
        checkpoint = Path(props["model_dir"]) / context.manifest["model"]["serializedFile"]
        self.model, self.info = load_classifier(checkpoint, self.device, self.settings.channels_last)
        if self.settings.quantize_int8 and self.device.type == "cpu":
            self.model = quantize_linear_int8(self.model)
        assert_inference_ready(self.model)
        self.static_padding = self._make_padding_static()
        self.autocast, self.autocast_dtype = self.settings.autocast_for(self.device)
        self.batch_size = int(props.get("batch_size") or 1)
        eager = self.model
        self.graph = self._build_graph()
        self.model = self.graph.module
        # images per forward pass; 0 = whole batch until warm-up times every size (CPU)
        self.chunk = min(self.settings.chunk_size or self.batch_size, self.batch_size)
        self.chunk_rates = None
        self.stream_chunk = self.chunk  # images per pass of a stream; timed at warm-up like chunk
        self.stream_chunk_rates = None
        self.requests_served = 0
        self.oom_splits = 0
        self._oom_lock = threading.Lock()  # streams may split at the same time
        # Pillow and torch release the GIL while decoding and resizing, so a batch decodes in
        # parallel; each decoding thread runs torch single-threaded (see single_threaded_torch).
        self.decoders = ThreadPoolExecutor(self.settings.decode_threads or os.cpu_count() or 1,
                                           initializer=single_threaded_torch)
        # CPU: one single-threaded forward stream per torch thread (handlers/chunking.py); their
        # own threads, not the decoders': sharing them cost 13% on 12 MP photos here.
        self.stream_count = torch.get_num_threads() if self.device.type == "cpu" and self.settings.cpu_streams else 1
        self.streams = (ThreadPoolExecutor(self.stream_count, initializer=single_threaded_torch)
                        if self.stream_count > 1 else None)
        self.last_inference_ms = None
        self.last_inference_at = None
        self.metrics = HandlerMetrics(None, context.model_name)
        self.warmup_ms = None
        self.warmed_up = self.settings.warmup and self._warm_up_or_fall_back(eager)
        del eager  # the frozen/compiled graph holds its own weights
        self.initialized = True
        logger.info("ready: %s v%s on %s", self.info.architecture, self.info.version, self.device)

    def _make_padding_static(self) -> int:
        """CPU: convolutions padded at run time get their padding baked in (handlers/padding.py)."""
        if self.device.type != "cpu" or not self.settings.cpu_static_padding:
            return 0
        try:
            count = make_static(self.model, self.info.recipe.crop_size)
        except Exception as exc:  # the model keeps its own padding
            logger.warning("static padding refused: %s", exc)
            return 0
        if count:
            logger.info("static padding: %d convolutions", count)
        return count

    def _build_graph(self):
        mode = resolve_mode(self.settings.graph, self.device, self.autocast)
        sizes = verification_sizes(self.batch_size) if mode != "eager" else []
        inputs = example_inputs(
            sizes, self.info.recipe.crop_size, lambda p: normalize(p, self.info.recipe),
            self.settings.channels_last, self.device,
        )
        graph = build_graph(self.model, mode, inputs, self._precision, self.autocast,
                            onednn_fusion=self.settings.onednn_fusion and self.device.type == "cpu")
        logger.info("graph: %s (built in %.0f ms) %s", graph.kind, graph.build_ms, graph.note)
        return graph

    def _warm_up_or_fall_back(self, eager) -> bool:
        """Warm up; a frozen or compiled graph that fails on a batch size verification did not
        cover is replaced by the eager model here, before any request reaches it."""
        try:
            return self._warm_up()
        except RuntimeError as exc:
            if self.graph.kind == "eager" or isinstance(exc, torch.OutOfMemoryError):
                raise
            logger.warning("graph: %s graph failed at warm-up, serving eagerly: %s", self.graph.kind, exc)
            self.graph = Graph(eager, "eager", note=f"{self.graph.kind} graph failed at warm-up: {exc}")
            self.model = eager
            return self._warm_up()

    def _warm_up(self) -> bool:
        # Every batch size TorchServe may hand us: oneDNN/cuDNN pick kernels per shape on first
        # use, a frozen graph specialises on its second run, a compiled one compiles per shape.
        start = time.perf_counter()
        sizes = range(1, self.batch_size + 1)
        for _ in range(1 if self.graph.kind == "eager" else 2):
            for n in sizes:
                self._forward_splitting_on_oom(self._zeros(n))
                if self.streams and n >= self.stream_count:  # each stream thread's first passes
                    in_streams(self._forward_splitting_on_oom, self._zeros(n), self.streams, self.stream_count)
        if self.device.type == "cpu" and self.settings.chunk_size == 0 and self.batch_size > 1:
            self.chunk_rates = time_sizes(self._forward_splitting_on_oom, candidate_sizes(self.batch_size), self._zeros)
            self.chunk = pick_chunk(self.chunk_rates)
            logger.info("chunk size %d; img/s by size: %s", self.chunk,
                        {n: round(r, 1) for n, r in self.chunk_rates.items()})
            if self.streams and self.batch_size >= self.stream_count:
                self._time_stream_chunks()
        self.warmup_ms = round((time.perf_counter() - start) * 1000)
        return True

    def _time_stream_chunks(self) -> None:
        """A full batch on the streams in chunks of each size up to an even share per stream."""
        share = -(-self.batch_size // self.stream_count)
        self.stream_chunk_rates = time_stream_chunks(self._forward_splitting_on_oom, self._zeros(self.batch_size),
                                                     self.streams, self.stream_count, candidate_sizes(share))
        self.stream_chunk = pick_chunk(self.stream_chunk_rates)
        logger.info("stream chunk size %d (%d streams); img/s by size: %s", self.stream_chunk, self.stream_count,
                    {n: round(r, 1) for n, r in self.stream_chunk_rates.items()})

    def _zeros(self, n: int) -> torch.Tensor:
        size = self.info.recipe.crop_size
        return torch.zeros(n, 3, size, size, dtype=torch.uint8, device=self.device)

    def handle(self, data, context):
        self.metrics = HandlerMetrics(getattr(context, "metrics", None), context.model_name)
        return super().handle(data, context)

    def preprocess(self, data):
        start = time.perf_counter()
        batch = Batch(answers=[None] * len(data), topk=[self.settings.topk] * len(data))
        decoded = list(self.decoders.map(self._decode, range(len(data)), data, [batch] * len(data)))
        for idx, result in enumerate(decoded):
            if isinstance(result, InputError):
                batch.answers[idx] = result
                self.metrics.input_error(result.type)
            else:
                batch.good.append(idx)
        if batch.good:
            batch.pixels = torch.stack([decoded[i] for i in batch.good])
        self.metrics.batch(len(data))
        self.metrics.stage("decode", (time.perf_counter() - start) * 1000)
        return batch

    def _decode(self, idx: int, item, batch: Batch):
        """One request -> uint8 pixels, or the InputError to answer it with. Never raises."""
        s = self.settings
        try:
            payload = extract_payload(item, s.max_body_bytes)
            requested = payload.topk if payload.topk is not None else self._header(idx, TOPK_HEADER)
            batch.topk[idx] = parse_topk(requested, s.topk, min(s.max_topk, len(self.info.labels)))
            return image_pixels(payload.image, s.max_image_pixels, self.info.recipe,
                                draft=s.jpeg_draft, torchcodec=s.jpeg_torchcodec)
        except InputError as err:
            return err
        except Exception as exc:  # a decoder bug must not cost the rest of the batch
            logger.exception("request %d: unexpected error while decoding", idx)
            return InputError(400, "undecodable_input", f"The input could not be decoded: {exc}.")

    def _header(self, idx: int, name: str):
        processors = getattr(self.context, "request_processor", None)
        if not processors:
            return None
        headers = self.context.get_all_request_header(idx) or {}
        return next((v for k, v in headers.items() if k.lower() == name), None)

    def inference(self, batch: Batch, *args, **kwargs):
        if batch.pixels is not None:
            splits = self.oom_splits
            batch.logits = self._forward(batch.pixels)
            self.metrics.stage("inference", self.last_inference_ms)
            self.metrics.oom_splits(self.oom_splits - splits)
        return batch

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        if self.streams and len(pixels) >= self.stream_count:
            parts = stream_parts(len(pixels), self.stream_count, self.stream_chunk)
            logits = in_streams(self._forward_splitting_on_oom, pixels, self.streams, parts)
        else:
            logits = self._chunked(pixels)
        self.last_inference_ms = round((time.perf_counter() - start) * 1000, 2)
        self.last_inference_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return logits

    def _chunked(self, pixels: torch.Tensor) -> torch.Tensor:
        return in_chunks(self._forward_splitting_on_oom, pixels, self.chunk)

    def _precision(self):
        # No autocast context at all when off: compiled graphs are guarded on it.
        if not self.autocast:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _forward_splitting_on_oom(self, pixels: torch.Tensor) -> torch.Tensor:
        try:
            with torch.inference_mode(), self._precision():
                x = normalize(pixels, self.info.recipe)
                if self.settings.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return self.model(x).float()
        except torch.OutOfMemoryError:
            if len(pixels) == 1:
                raise
            with self._oom_lock:
                self.oom_splits += 1
            logger.warning("out of memory on a batch of %d: retrying in halves", len(pixels))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(pixels) // 2
            return torch.cat([self._forward_splitting_on_oom(p) for p in (pixels[:half], pixels[half:])])

    def postprocess(self, batch: Batch):
        start = time.perf_counter()
        out = self._answers(batch)
        self.metrics.stage("postprocess", (time.perf_counter() - start) * 1000)
        return out

    def _answers(self, batch: Batch) -> list:
        ks = [batch.topk[i] for i in batch.good]
        for idx, answer in zip(batch.good, top_k(batch.logits, self.info.labels, ks) if ks else []):
            batch.answers[idx] = answer
        self.requests_served += len(batch.good)
        out = []
        for idx, answer in enumerate(batch.answers):
            self._set_content_type(idx)
            if isinstance(answer, InputError):
                self.context.set_response_status(answer.code, answer.reason(), idx)
                answer = answer.to_body()
            out.append(answer)
        return out

    def _set_content_type(self, idx: int) -> None:
        if getattr(self.context, "request_processor", None):
            self.context.set_response_content_type(idx, "application/json")

    def describe_handle(self):
        """Health for `GET /models/NAME?customized=true`."""
        return {
            "model_version": self.info.version,
            "architecture": self.info.architecture,
            "num_classes": len(self.info.labels),
            "recipe": self.info.recipe.to_dict(),
            "device": str(self.device),
            "dtype": str(self.autocast_dtype if self.autocast else torch.float32).replace("torch.", ""),
            "autocast": self.autocast,
            "eval_mode_verified": True,
            "graph": self.graph.kind,
            "graph_note": self.graph.note,
            "warmup_ms": self.warmup_ms,
            "chunk_size": self.chunk,
            "cpu_streams": self.stream_count if self.streams else None,
            "stream_chunk_size": self.stream_chunk if self.streams else None,
            "static_padding_convs": self.static_padding,
            "torch_threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "int8_linear": self.settings.quantize_int8 and self.device.type == "cpu",
            "unsafe_source": self.info.unsafe_source,
            "warmed_up": bool(self.warmed_up),
            "requests_served": self.requests_served,
            "oom_batch_splits": self.oom_splits,
            "last_inference_ms": self.last_inference_ms,
            "last_inference_at": self.last_inference_at,
            **memory_stats(self.device),
        }
