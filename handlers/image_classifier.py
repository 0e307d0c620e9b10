"""The TorchServe handler: wires context and settings to the request path and the engine.

Absolute imports on purpose: in a .mar this file sits at the archive root beside the
`handlers/` package, which TorchServe puts on the worker's PYTHONPATH.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch

# TorchServe's base_handler imports openvino.torch when OpenVINO is installed, only to register
# OpenVINO as a torch.compile backend, which this handler never uses (it calls OpenVINO's own
# runtime: handlers/model/onnx_backends.py). That import pulls in torch._dynamo and costs about
# two seconds of every worker start; base_handler then notes "OpenVINO is not enabled" for
# torch.compile, which is true and harmless here.
sys.modules.setdefault("openvino.torch", None)
sys.modules.setdefault("openvino_telemetry", None)  # that import still imports openvino: see import_openvino
from ts.torch_handler.base_handler import BaseHandler

from handlers.metrics import HandlerMetrics
from handlers.model.checkpoint import load_classifier, read_info
from handlers.model.device import select_device, single_threaded_torch
from handlers.model.reference import FILE as REFERENCE_FILE
from handlers.model.reference import ReferenceSet
from handlers.model.selection import archive_evidence, choose_engine
from handlers.model.workers import replaces_a_worker
from handlers.monitoring import Monitor, Profile, Reporter
from handlers.request.answers import probabilities, top_k
from handlers.request.batch import Batch
from handlers.request.budget import DecodeBudget, release_freed_memory
from handlers.request.device_decode import decode_batch
from handlers.request.errors import RequestError, internal_error
from handlers.request.pixels import image_pixels, tensor_pixels
from handlers.request.protocols import read_request, response
from handlers.settings import Settings

logger = logging.getLogger(__name__)
TRIM_AFTER_PIXELS = 16_000_000  # a batch that decoded more gives the freed heap back afterwards
# A load still running after this long writes every thread's stack to stderr (the model log),
# then carries on: TorchServe gives a worker 120 s before it kills it, and says nothing of where.
LOAD_WATCHDOG_S = 60.0


class ImageClassifier(BaseHandler):
    """Image classification from any checkpoint or program in this project's format."""

    def initialize(self, context):
        faulthandler.dump_traceback_later(LOAD_WATCHDOG_S)
        try:
            self._load(context)
        finally:  # loaded or failed: either way it no longer hangs
            faulthandler.cancel_dump_traceback_later()
        self.initialized = True
        logger.info(
            "ready %.1f s after the worker started: %s v%s on %s",
            self.ready_after_s,
            self.info.architecture,
            self.version,
            self.device,
        )

    def _load(self, context) -> None:
        started = psutil.Process().create_time()
        self.start_s = {"imports": round(time.time() - started, 2)}  # process start -> here: Python, torch, TorchServe
        props = context.system_properties
        self.settings = s = Settings.from_model_yaml(getattr(context, "model_yaml_config", None))
        self.device = select_device(props.get("gpu_id"))
        if self.device.type == "cpu" and s.cpu_threads:
            torch.set_num_threads(s.cpu_threads)
        model_dir = Path(props["model_dir"])
        artifact = model_dir / context.manifest["model"]["serializedFile"]
        self.info = read_info(artifact, s.trust_program)
        onnx = model_dir / "model.onnx"
        reference = ReferenceSet.load(model_dir / REFERENCE_FILE)
        self.engine, self.selection = choose_engine(
            self.info.recipe,
            self.device,
            int(props.get("batch_size") or 1),
            s.engine_options(),
            lambda: load_classifier(artifact, self.device, s.enabled("channels_last"), s.trust_program)[0],
            onnx if onnx.exists() else None,
            reference,
            model_dir / ".engine",
            needs_evidence=s.fast_pixels,
            **archive_evidence(model_dir),
        )
        recipe = self.info.recipe  # what is fed and how sure the answers are, against the archive's profile
        self.monitor = Monitor(Profile.of(reference, recipe.mean, recipe.std), recipe.mean, recipe.std,
                               labels=self.info.labels)  # fmt: skip
        self.restarted = replaces_a_worker(model_dir / ".engine")
        # The version TorchServe serves is the archive's (`--version`); the checkpoint's may differ.
        self.version = str(context.manifest["model"].get("modelVersion") or self.info.version)
        self.model_name = context.model_name
        # Pillow and torch release the GIL while decoding and resizing, so a batch decodes in
        # parallel; each decoding thread runs torch single-threaded (see single_threaded_torch).
        self.decoders = ThreadPoolExecutor(
            s.decode_threads or torch.get_num_threads(), thread_name_prefix="decode", initializer=single_threaded_torch
        )
        self.budget = DecodeBudget(s.max_image_pixels)  # one image at the pixel limit decodes at a time
        # KServe's runtime sets TS_SERVICE_ENVELOPE in its pods; its wrapper there parses every answer as JSON
        self.limits = s.limits(len(self.info.labels), behind_kserve=bool(os.environ.get("TS_SERVICE_ENVELOPE")))
        self.device_decode = self.device.type == "cuda" and s.device_decode
        self.metrics = HandlerMetrics(None, context.model_name)
        if s.enabled("monitoring"):
            self.reporter = Reporter(self.monitor, lambda: self.metrics).start()
        self.requests_served = 0
        self.ready_after_s = round(time.time() - started, 1)
        self.start_s["choose_engine"] = round(self.ready_after_s - self.start_s["imports"], 2)

    def handle(self, data, context):
        self.metrics = HandlerMetrics(getattr(context, "metrics", None), context.model_name)
        if self.restarted is not None:  # counted once there is a metrics cache to count it in
            self.metrics.worker_restart(1 if self.restarted else 0)
            self.restarted = None
        return super().handle(data, context)

    def preprocess(self, data) -> Batch:
        """Each request read and each image decoded on its own: what fails is that request's error."""
        self.started = start = time.perf_counter()
        batch = Batch.read(list(self.decoders.map(self._read, range(len(data)), data)))
        batch.add_pixels(self._decode_all(batch.images()), self.device)
        for err in batch.errors:
            if err is not None and err.code < 500:
                self.metrics.input_error(err.type)
        if batch.pixels is not None and self.settings.enabled("monitoring"):
            self.monitor.add_inputs(batch.pixels)
        if self.budget.take_decoded() > TRIM_AFTER_PIXELS:
            release_freed_memory()
        self.metrics.batch(len(data))
        self.metrics.stage("decode", time.perf_counter() - start)
        return batch

    def inference(self, batch: Batch, *args, **kwargs) -> Batch:
        if batch.pixels is not None:
            try:
                run = self.engine.run(batch.pixels)
            except Exception as exc:  # the pass failed for everyone in it: each gets a 500, logged
                batch.fail_pending(self._bug("running the model on", exc))
                return batch
            batch.logits = run.logits
            self.metrics.stage("inference", run.ms / 1000)
            self.metrics.oom_splits(run.oom_splits)
        return batch

    def postprocess(self, batch: Batch) -> list:
        start = time.perf_counter()
        out = self.respond(batch, self.info.labels, self.version)
        if batch.probs is not None and self.settings.enabled("monitoring"):
            self.monitor.add_answers(batch.probs)  # reported by self.reporter's thread
        self.metrics.stage("answer", time.perf_counter() - start)
        return out

    def respond(self, batch: Batch, labels, version: str) -> list:
        """Each request's body, in the batch's order, answered from `labels` as model `version`."""
        pending = batch.pending()
        ks = [batch.requests[i].topk for i in pending for _ in batch.requests[i].images]
        batch.probs = probabilities(batch.logits) if ks else None
        rows = top_k(batch.probs, labels, ks) if ks else []
        return [self._answer(batch, i, rows, version) for i in range(len(batch))]

    def _answer(self, batch: Batch, i: int, rows: list, version: str):
        """Request i's body, with its status and headers set on the context (at its place there)."""
        error, request, idx = batch.errors[i], batch.requests[i], batch.positions[i]
        self._set_headers(idx, {"x-model-version": version})
        if error is None:
            try:
                body, headers = response(request, rows[batch.spans[i]], self.model_name, version)
                self._set_headers(idx, headers)
                self.requests_served += 1
                self.metrics.request(request.protocol, "ok", time.perf_counter() - self.started)
                return body
            except Exception as exc:
                error = self._bug("answering", exc)
        self._set_headers(idx, {"content-type": "application/json"})
        self.context.set_response_status(error.code, error.reason(), idx)
        outcome = "client_error" if error.code < 500 else "server_error"
        self.metrics.request(error.protocol, outcome, time.perf_counter() - self.started)
        return error.to_body()

    def _read(self, idx: int, item):
        """One request item -> its Request, or the RequestError it is answered with."""
        try:
            return read_request(item, self._headers(idx).get, self.limits)
        except RequestError as err:
            return err
        except Exception as exc:
            return self._bug("reading", exc)

    def _decode_all(self, images: list, recipe=None) -> list:
        recipe = recipe or self.info.recipe
        on_cpu = lambda rest: list(self.decoders.map(lambda image: self._decode(image, recipe), rest))  # noqa: E731
        if self.device_decode:
            return decode_batch(images, recipe, self.device, self.settings.max_image_pixels, on_cpu)
        return on_cpu(images)

    def _decode(self, image, recipe=None) -> torch.Tensor | RequestError:
        """One image -> the recipe's pixels, or the RequestError its request is answered with."""
        s, recipe = self.settings, recipe or self.info.recipe
        try:
            if isinstance(image, torch.Tensor):
                self._saw("pixels", image.shape[-1], image.shape[-2])
                return tensor_pixels(image, recipe, s.fast_pixels)
            return image_pixels(
                image,
                s.max_image_pixels,
                recipe,
                s.fast_pixels,
                budget=self.budget,
                on_open=self._saw,
                draft=s.enabled("jpeg_draft"),
                torchcodec=s.enabled("torchcodec"),
            )
        except RequestError as err:
            return err
        except Exception as exc:
            return self._bug("decoding an image of", exc)

    def _saw(self, fmt: str, width: int, height: int) -> None:
        if self.settings.enabled("monitoring"):
            self.monitor.saw(fmt, width, height)

    def _bug(self, stage: str, exc: Exception) -> RequestError:
        """A fault of ours in one request (or one pass): logged with its traceback, counted, a 500."""
        logger.error("internal error while %s a request", stage, exc_info=exc)
        self.metrics.internal_error(stage.split()[0])
        return internal_error(stage, exc)

    def _headers(self, idx: int) -> dict:
        if not getattr(self.context, "request_processor", None):
            return {}
        return {k.lower(): v for k, v in (self.context.get_all_request_header(idx) or {}).items()}

    def _set_headers(self, idx: int, headers: dict) -> None:
        if getattr(self.context, "request_processor", None):
            for key, value in headers.items():
                self.context.set_response_header(idx, key, value)

    def describe_handle(self):
        """Health for `GET /models/NAME?customized=true`."""
        return {
            "model_version": self.version,
            "checkpoint_version": self.info.version,
            "architecture": self.info.architecture,
            "num_classes": len(self.info.labels),
            "recipe": self.info.recipe.to_dict(),
            "pixels": self.settings.pixels,
            "unsafe_source": self.info.unsafe_source,
            "ready_after_s": self.ready_after_s,
            "start_s": self.start_s,
            "requests_served": self.requests_served,
            **self.engine.describe(),
            "engine_selection": self.selection.to_dict(),
            "monitoring": self.monitor.describe(),
        }
