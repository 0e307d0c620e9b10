"""The TorchServe handler: wires context and settings to the request path and the engine.

Absolute imports on purpose: in a .mar this file sits at the archive root beside the
`handlers/` package, which TorchServe puts on the worker's PYTHONPATH.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.metrics import HandlerMetrics
from handlers.model.checkpoint import load_classifier
from handlers.model.device import select_device, single_threaded_torch
from handlers.model.engine import Engine
from handlers.request.answers import Decoded, answers
from handlers.request.budget import DecodeBudget, release_freed_memory
from handlers.request.errors import InputError
from handlers.request.payload import extract_payload, parse_topk
from handlers.request.pixels import image_pixels
from handlers.settings import Settings

logger = logging.getLogger(__name__)
TOPK_HEADER = "x-topk"
TRIM_AFTER_PIXELS = 16_000_000  # a batch that decoded more gives the freed heap back afterwards


class ImageClassifier(BaseHandler):
    """Image classification from any checkpoint or program in this project's format."""

    def initialize(self, context):
        props = context.system_properties
        self.settings = Settings.from_model_yaml(getattr(context, "model_yaml_config", None))
        self.device = select_device(props.get("gpu_id"))
        if self.device.type == "cpu" and self.settings.cpu_threads:
            torch.set_num_threads(self.settings.cpu_threads)
        artifact = Path(props["model_dir"]) / context.manifest["model"]["serializedFile"]
        model, self.info = load_classifier(artifact, self.device, self.settings.enabled("channels_last"))
        batch_size = int(props.get("batch_size") or 1)
        self.engine = Engine(model, self.info.recipe, self.device, batch_size, self.settings.engine_options())
        # The version TorchServe serves is the archive's (`--version`); the checkpoint's may differ.
        self.version = str(context.manifest["model"].get("modelVersion") or self.info.version)
        # Pillow and torch release the GIL while decoding and resizing, so a batch decodes in
        # parallel; each decoding thread runs torch single-threaded (see single_threaded_torch).
        self.decoders = ThreadPoolExecutor(self.settings.decode_threads or torch.get_num_threads(),
                                           thread_name_prefix="decode", initializer=single_threaded_torch)
        # one image at the pixel limit decodes at a time (README, "Configuration": its memory)
        self.budget = DecodeBudget(self.settings.max_image_pixels)
        self.metrics = HandlerMetrics(None, context.model_name)
        self.requests_served = 0
        self.ready_after_s = round(time.time() - psutil.Process().create_time(), 1)
        self.initialized = True
        logger.info("ready %.1f s after the worker started: %s v%s on %s", self.ready_after_s,
                    self.info.architecture, self.version, self.device)

    def handle(self, data, context):
        self.metrics = HandlerMetrics(getattr(context, "metrics", None), context.model_name)
        return super().handle(data, context)

    def preprocess(self, data):
        """Each request on its own: a Decoded, or the InputError to answer it with."""
        start = time.perf_counter()
        requests = list(self.decoders.map(self._decode, range(len(data)), data))
        for request in requests:
            if isinstance(request, InputError):
                self.metrics.input_error(request.type)
        if self.budget.take_decoded() > TRIM_AFTER_PIXELS:
            release_freed_memory()
        self.metrics.batch(len(data))
        self.metrics.stage("decode", (time.perf_counter() - start) * 1000)
        return requests

    def _decode(self, idx: int, item) -> Decoded | InputError:
        s = self.settings
        try:
            payload = extract_payload(item, s.max_body_bytes)
            requested = payload.topk if payload.topk is not None else self._header(idx, TOPK_HEADER)
            topk = parse_topk(requested, s.topk, min(s.max_topk, len(self.info.labels)))
            pixels = image_pixels(payload.image, s.max_image_pixels, self.info.recipe, draft=s.enabled("jpeg_draft"),
                                  torchcodec=s.enabled("torchcodec"), budget=self.budget)
            return Decoded(pixels, topk)
        except InputError as err:
            return err
        except Exception as exc:  # a decoder bug must not cost the rest of the batch
            logger.exception("request %d: unexpected error while decoding", idx)
            return InputError(400, "undecodable_input", f"The input could not be decoded: {exc}.")

    def _header(self, idx: int, name: str):
        if not getattr(self.context, "request_processor", None):
            return None
        headers = self.context.get_all_request_header(idx) or {}
        return next((v for k, v in headers.items() if k.lower() == name), None)

    def inference(self, requests, *args, **kwargs):
        good = [r.pixels for r in requests if isinstance(r, Decoded)]
        if not good:
            return requests, None
        run = self.engine.run(torch.stack(good))
        self.metrics.stage("inference", run.ms)
        self.metrics.oom_splits(run.oom_splits)
        return requests, run.logits

    def postprocess(self, inferred):
        start = time.perf_counter()
        requests, logits = inferred
        out = []
        for idx, answer in enumerate(answers(requests, logits, self.info.labels)):
            if getattr(self.context, "request_processor", None):
                self.context.set_response_content_type(idx, "application/json")
            if isinstance(answer, InputError):
                self.context.set_response_status(answer.code, answer.reason(), idx)
                answer = answer.to_body()
            else:
                self.requests_served += 1
            out.append(answer)
        self.metrics.stage("postprocess", (time.perf_counter() - start) * 1000)
        return out

    def describe_handle(self):
        """Health for `GET /models/NAME?customized=true`."""
        return {
            "model_version": self.version,
            "checkpoint_version": self.info.version,
            "architecture": self.info.architecture,
            "num_classes": len(self.info.labels),
            "recipe": self.info.recipe.to_dict(),
            "unsafe_source": self.info.unsafe_source,
            "ready_after_s": self.ready_after_s,
            "requests_served": self.requests_served,
            **self.engine.describe(),
        }
