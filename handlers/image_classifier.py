"""The TorchServe handler: a thin adapter from TorchServe's context to the request core
(handlers/core/): the batch's bodies and headers in; each answer's status, headers and body
written back through the context; TorchServe's metrics cache as the core's metrics.

Absolute imports on purpose: in a .mar this file sits at the archive root beside the
`handlers/` package, which TorchServe puts on the worker's PYTHONPATH.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import time
from pathlib import Path

import psutil

# TorchServe's base_handler imports openvino.torch when OpenVINO is installed, only to register
# OpenVINO as a torch.compile backend, which this handler never uses (it calls OpenVINO's own
# runtime: handlers/model/onnx_backends.py). That import pulls in torch._dynamo and costs about
# two seconds of every worker start; base_handler then notes "OpenVINO is not enabled" for
# torch.compile, which is true and harmless here.
sys.modules.setdefault("openvino.torch", None)
sys.modules.setdefault("openvino_telemetry", None)  # that import still imports openvino: see import_openvino
from ts.torch_handler.base_handler import BaseHandler

from handlers.core.classifier import Classifier, Work
from handlers.core.exchange import Item
from handlers.metrics import HandlerMetrics
from handlers.settings import Settings

logger = logging.getLogger(__name__)
# A load still running after this long writes every thread's stack to stderr (the model log),
# then carries on: TorchServe gives a worker 120 s before it kills it, and says nothing of where.
LOAD_WATCHDOG_S = 60.0


class ImageClassifier(BaseHandler):
    """Image classification from any checkpoint or program in this project's format; an
    experiment archive's settings add its candidate (handlers/core/experiment.py)."""

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
            self.core.info.architecture,
            self.core.archive_version,
            self.core.device,
        )

    def _load(self, context) -> None:
        started = psutil.Process().create_time()
        self.start_s = {"imports": round(time.time() - started, 2)}  # process start -> here: Python, torch, TorchServe
        props = context.system_properties
        model = context.manifest["model"]
        self.core = Classifier(
            Path(props["model_dir"]),
            model["serializedFile"],
            Settings.from_model_yaml(getattr(context, "model_yaml_config", None)),
            model_name=context.model_name,
            version=str(model.get("modelVersion") or ""),
            batch_size=int(props.get("batch_size") or 1),
            gpu_id=props.get("gpu_id"),
            # KServe's runtime sets TS_SERVICE_ENVELOPE in its pods; its wrapper there parses every answer as JSON
            behind_kserve_wrapper=bool(os.environ.get("TS_SERVICE_ENVELOPE")),
        )
        self.device = self.core.device
        self.ready_after_s = round(time.time() - started, 1)
        self.start_s["choose_engine"] = round(self.ready_after_s - self.start_s["imports"], 2)

    # what tests and tools look at
    engine = property(lambda self: self.core.engine)
    decoders = property(lambda self: self.core.decoders)
    reporter = property(lambda self: self.core.reporter)
    settings = property(lambda self: self.core.settings)
    info = property(lambda self: self.core.info)
    monitor = property(lambda self: self.core.monitor)

    def handle(self, data, context):
        self.core.metrics = HandlerMetrics(getattr(context, "metrics", None), context.model_name)
        return super().handle(data, context)

    def preprocess(self, data) -> Work:
        return self.core.read([Item(None, self._headers(idx), item) for idx, item in enumerate(data)])

    def inference(self, work: Work, *args, **kwargs) -> Work:
        return self.core.run(work)

    def postprocess(self, work: Work) -> list:
        out = []
        for idx, answer in enumerate(self.core.answer(work)):
            self._set_headers(idx, answer.headers)
            if answer.status != 200:
                self.context.set_response_status(answer.status, answer.reason, idx)
            out.append(answer.body)
        return out

    def _headers(self, idx: int) -> dict:
        if not getattr(self.context, "request_processor", None):
            return {}
        return {k.lower(): v for k, v in (self.context.get_all_request_header(idx) or {}).items()}

    def _set_headers(self, idx: int, headers: dict) -> None:
        if getattr(self.context, "request_processor", None):
            for key, value in headers.items():
                self.context.set_response_header(idx, key, value)

    def _decode(self, image, recipe=None):
        return self.core.decode(image, recipe)

    def describe_handle(self):
        """Health for `GET /models/NAME?customized=true`."""
        health = self.core.describe()
        return {**health, "ready_after_s": self.ready_after_s, "start_s": self.start_s}
