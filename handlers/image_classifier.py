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
from handlers.request.device_decode import decode_on_device
from handlers.request.errors import InputError
from handlers.request.payload import parse_topk
from handlers.request.pixels import image_pixels, tensor_pixels
from handlers.request.protocols import Limits, Request, read_request, response
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
        self.limits = Limits(self.settings.max_body_bytes, self.settings.max_images_per_request,
                             self.settings.max_image_pixels)
        self.model_name = context.model_name
        # CUDA workers decode a batch's JPEGs in one nvJPEG call (handlers/request/device_decode.py)
        self.device_decode = self.device.type == "cuda" and self.settings.enabled("device_decode")
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
        """Each request on its own, in any protocol: (Request, Decoded or the InputError to answer)."""
        start = time.perf_counter()
        requests = list(self.decoders.map(self._read, range(len(data)), data))
        # every image of every request decodes in parallel, so a request of N images takes one turn
        jobs = [image for r in requests if r.error is None for image in r.images]
        pixels = iter(self._decode_all(jobs))
        decoded = []
        for request in requests:
            results = [next(pixels) for _ in request.images] if request.error is None else []
            bad = next((i for i, p in enumerate(results) if isinstance(p, InputError)), None)
            if bad is not None:
                request.error = request.element_error(bad, results[bad])
            if request.error is not None:
                self.metrics.input_error(request.error.type)
            decoded.append((request, request.error or Decoded(results, request.topk)))
        if self.budget.take_decoded() > TRIM_AFTER_PIXELS:
            release_freed_memory()
        self.metrics.batch(len(data))
        self.metrics.stage("decode", (time.perf_counter() - start) * 1000)
        return decoded

    def _read(self, idx: int, item) -> Request:
        s = self.settings
        headers = self._headers(idx)
        request = read_request(item, headers.get, self.limits)
        if request.error is None:
            requested = request.topk if request.topk is not None else headers.get(TOPK_HEADER)
            try:
                request.topk = parse_topk(requested, s.topk, min(s.max_topk, len(self.info.labels)))
            except InputError as err:
                request.error = err
        return request

    def _decode_all(self, images: list) -> list:
        if not self.device_decode:
            return list(self.decoders.map(self._decode, images))
        encoded = [i for i, image in enumerate(images) if not isinstance(image, torch.Tensor)]
        on_device = dict(zip(encoded, decode_on_device([images[i] for i in encoded], self.info.recipe, self.device,
                                                       self.settings.max_image_pixels)))
        rest = [i for i in range(len(images)) if on_device.get(i) is None]
        out = dict(on_device)
        out.update(zip(rest, self.decoders.map(self._decode, [images[i] for i in rest])))
        return [out[i] for i in range(len(images))]

    def _decode(self, image) -> torch.Tensor | InputError:
        s = self.settings
        try:
            if isinstance(image, torch.Tensor):
                return tensor_pixels(image, self.info.recipe)
            return image_pixels(image, s.max_image_pixels, self.info.recipe, draft=s.enabled("jpeg_draft"),
                                torchcodec=s.enabled("torchcodec"), budget=self.budget)
        except InputError as err:
            return err
        except Exception as exc:  # a decoder bug must not cost the rest of the batch
            logger.exception("unexpected error while decoding an image")
            return InputError(400, "undecodable_input", f"The input could not be decoded: {exc}.")

    def _headers(self, idx: int) -> dict:
        if not getattr(self.context, "request_processor", None):
            return {}
        return {k.lower(): v for k, v in (self.context.get_all_request_header(idx) or {}).items()}

    def inference(self, decoded, *args, **kwargs):
        good = [p for _, d in decoded if isinstance(d, Decoded) for p in d.pixels]
        if not good:
            return decoded, None
        if any(p.device != good[0].device for p in good):  # some decoded on the device, some not
            good = [p.to(self.device) for p in good]
        run = self.engine.run(torch.stack(good))
        self.metrics.stage("inference", run.ms)
        self.metrics.oom_splits(run.oom_splits)
        return decoded, run.logits

    def postprocess(self, inferred):
        start = time.perf_counter()
        decoded, logits = inferred
        results = answers([d for _, d in decoded], logits, self.info.labels)
        out = []
        for idx, ((request, _), result) in enumerate(zip(decoded, results)):
            body, headers = response(request, result, self.model_name, self.version)
            if getattr(self.context, "request_processor", None):
                for key, value in headers.items():
                    self.context.set_response_header(idx, key, value)
            if isinstance(result, InputError):
                self.context.set_response_status(result.code, result.reason(), idx)
            else:
                self.requests_served += 1
            out.append(body)
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
