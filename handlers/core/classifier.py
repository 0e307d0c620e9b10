"""The request core: a model's archive folder loaded once, then batches of requests answered.

`handle(items)` is `answer(run(read(items)))`; a server calls the three steps where its own
flow has them (TorchServe's preprocess, inference, postprocess). Every request is read and each
image decoded on its own, so what fails is that request's answer; the batch's images run through
the engine in one pass (per arm of a split experiment); each request gets its top-k in its
protocol. Every mode (plain, shadow, split) takes this one path: the same decoding limits,
monitoring, memory trim and metrics.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model.checkpoint import load_classifier, read_info
from ..model.device import select_device, single_threaded_torch
from ..model.reference import FILE as REFERENCE_FILE
from ..model.reference import ReferenceSet
from ..model.selection import archive_evidence, choose_engine
from ..model.workers import replaces_a_worker
from ..monitoring import Monitor, Profile, Reporter
from ..request.answers import probabilities, top_k
from ..request.batch import Batch
from ..request.budget import DecodeBudget, release_freed_memory
from ..request.device_decode import decode_batch
from ..request.errors import RequestError, internal_error
from ..request.pixels import image_pixels, tensor_pixels
from ..request.protocols import read_request, response
from ..settings import Settings
from .exchange import Answer, Item
from .experiment import Experiment
from .metrics import Metrics

logger = logging.getLogger(__name__)
TRIM_AFTER_PIXELS = 16_000_000  # a batch that decoded more gives the freed heap back afterwards
PRIMARY, CANDIDATE = "primary", "candidate"
JSON = {"content-type": "application/json"}


@dataclass
class Work:
    """A batch in flight: its requests per arm (one arm, the primary, outside a split)."""

    size: int
    parts: dict  # arm -> Batch, each keeping its requests' places in the whole
    started: float = field(default_factory=time.perf_counter)
    seconds: dict = field(default_factory=dict)  # arm -> model time of its pass


class Classifier:
    """One model (and an experiment's candidate beside it) serving batches of requests."""

    def __init__(self, model_dir: Path, serialized_file: str, settings: Settings, *, model_name: str, version: str,
                 batch_size: int, gpu_id=None, behind_kserve_wrapper: bool = False):  # fmt: skip
        """Load the archive unpacked at `model_dir`: its checkpoint (or program) `serialized_file`,
        the engine chosen for this host, the monitor, and its experiment when the settings hold one."""
        self.settings = s = settings
        self.model_name, self.batch_size = model_name, batch_size
        self.device = select_device(gpu_id)
        if self.device.type == "cpu" and s.cpu_threads:
            torch.set_num_threads(s.cpu_threads)
        model_dir = Path(model_dir)
        artifact = model_dir / serialized_file
        self.info = read_info(artifact, s.trust_program)
        onnx = model_dir / "model.onnx"
        reference = ReferenceSet.load(model_dir / REFERENCE_FILE)
        self.engine, self.selection = choose_engine(
            self.info.recipe,
            self.device,
            batch_size,
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
        # The version served is the archive's; the checkpoint's may differ. An experiment's answers
        # say which model gave them: the primary's version, or in a split the candidate's.
        self.archive_version = self.version = version or self.info.version
        # Pillow and torch release the GIL while decoding and resizing, so a batch decodes in
        # parallel; each decoding thread runs torch single-threaded (see single_threaded_torch).
        self.decoders = ThreadPoolExecutor(
            s.decode_threads or torch.get_num_threads(), thread_name_prefix="decode", initializer=single_threaded_torch
        )
        self.budget = DecodeBudget(s.max_image_pixels)  # one image at the pixel limit decodes at a time
        # behind KServe's TorchServe wrapper every answer must parse as JSON (no binary outputs)
        self.limits = s.limits(len(self.info.labels), behind_kserve=behind_kserve_wrapper)
        self.device_decode = self.device.type == "cuda" and s.device_decode
        self.metrics = Metrics(model_name)  # a server sets its own (TorchServe: per batch, its cache)
        self.experiment = None
        if s.experiment is not None:
            self.experiment = Experiment(self, model_dir, s.experiment)
            self.version = self.experiment.config.primary_version
        self.reporter = None
        if s.enabled("monitoring"):
            self.reporter = Reporter(self.monitor, lambda: self.metrics)
            if self.experiment is not None:  # pairs reach Prometheus within a second
                self.reporter.also.append(lambda metrics: metrics.experiment(self.experiment.pairing))
            self.reporter.start()
        self.requests_served = 0

    # -- the request path -----------------------------------------------------------------------
    def handle(self, items: list[Item]) -> list[Answer]:
        return self.answer(self.run(self.read(items)))

    def read(self, items: list[Item]) -> Work:
        """Each request read and each image decoded on its own: what fails is that request's error."""
        start = time.perf_counter()
        if self.restarted is not None:  # counted once there is a metrics sink to count it in
            self.metrics.worker_restart(1 if self.restarted else 0)
            self.restarted = None
        whole = Batch.read(list(self.decoders.map(self._read, items)))
        arms = self.experiment.arms(items) if self.experiment is not None else None
        if arms is None:
            parts = {PRIMARY: whole}
        else:
            parts = {arm: whole.subset([i for i, a in enumerate(arms) if a == arm]) for arm in (PRIMARY, CANDIDATE)}
        for arm, part in parts.items():
            recipe = self.info.recipe if arm == PRIMARY else self.experiment.info.recipe
            part.add_pixels(self._decode_all(part.images(), recipe), self.device)
            for err in part.errors:
                if err is not None and err.code < 500:
                    self.metrics.input_error(err.type)
            if part.pixels is not None and self.settings.enabled("monitoring"):
                self.monitor.add_inputs(part.pixels)
        if self.budget.take_decoded() > TRIM_AFTER_PIXELS:
            release_freed_memory()
        self.metrics.batch(len(items))
        self.metrics.stage("decode", time.perf_counter() - start)
        return Work(len(items), parts, start)

    def run(self, work: Work) -> Work:
        """Each arm's images through its engine, one pass; a pass that fails is a 500 for each of its requests."""
        for arm, part in work.parts.items():
            if part.pixels is None:
                continue
            engine = self.engine if arm == PRIMARY else self.experiment.engine
            start = time.perf_counter()
            try:
                run = engine.run(part.pixels)
            except Exception as exc:  # the pass failed for everyone in it: each gets a 500, logged
                part.fail_pending(self._bug("running the model on", exc))
                continue
            part.logits = run.logits
            work.seconds[arm] = time.perf_counter() - start
            self.metrics.stage("inference", run.ms / 1000)
            self.metrics.oom_splits(run.oom_splits)
            if self.experiment is not None and self.experiment.split:
                self.metrics.arm_seconds(arm, work.seconds[arm])
        return work

    def answer(self, work: Work) -> list[Answer]:
        """Each request's answer, in the order the requests came."""
        start = time.perf_counter()
        out = [None] * work.size
        for arm, part in work.parts.items():
            info, version = self.info, self.version
            if arm == CANDIDATE:
                info, version = self.experiment.info, self.experiment.config.candidate_version
            for position, answer in zip(part.positions, self._respond(part, info.labels, version, work.started)):
                out[position] = answer
            if arm == PRIMARY and part.probs is not None and self.settings.enabled("monitoring"):
                self.monitor.add_answers(part.probs)  # reported by self.reporter's thread
        if self.experiment is not None:
            self.experiment.after(work, out, self.metrics)
            self.metrics.experiment(self.experiment.pairing)
        self.metrics.stage("answer", time.perf_counter() - start)
        return out

    def _respond(self, batch: Batch, labels, version: str, started: float) -> list[Answer]:
        pending = batch.pending()
        ks = [batch.requests[i].topk for i in pending for _ in batch.requests[i].images]
        batch.probs = probabilities(batch.logits) if ks else None
        rows = top_k(batch.probs, labels, ks) if ks else []
        return [self._answer(batch, i, rows, version, started) for i in range(len(batch))]

    def _answer(self, batch: Batch, i: int, rows: list, version: str, started: float) -> Answer:
        error, request = batch.errors[i], batch.requests[i]
        if error is None:
            try:
                mine = rows[batch.spans[i]]
                body, headers = response(request, mine, self.model_name, version)
                self.requests_served += 1
                self.metrics.request(request.protocol, "ok", time.perf_counter() - started)
                return Answer(200, body, {"x-model-version": version, **headers}, request, mine, version=version)
            except Exception as exc:
                error = self._bug("answering", exc)
        outcome = "client_error" if error.code < 500 else "server_error"
        self.metrics.request(error.protocol, outcome, time.perf_counter() - started)
        return Answer(error.code, error.to_body(), {"x-model-version": version, **JSON}, request, error=error,
                      version=version)  # fmt: skip

    def _read(self, item: Item):
        """One request -> its Request, or the RequestError it is answered with."""
        try:
            fields = item.fields if item.fields is not None else {"body": item.body}
            return read_request(fields, item.headers.get, self.limits)
        except RequestError as err:
            return err
        except Exception as exc:
            return self._bug("reading", exc)

    def _decode_all(self, images: list, recipe) -> list:
        on_cpu = lambda rest: list(self.decoders.map(lambda image: self.decode(image, recipe), rest))  # noqa: E731
        if self.device_decode:
            return decode_batch(images, recipe, self.device, self.settings.max_image_pixels, on_cpu)
        return on_cpu(images)

    def decode(self, image, recipe=None, budget=None, quiet: bool = False) -> torch.Tensor | RequestError:
        """One image -> the recipe's pixels, or the RequestError its request is answered with.
        `quiet`: for a shadow's own decoding, which neither monitors the input nor counts a fault
        of its own as the server's (it raises instead)."""
        s, recipe = self.settings, recipe or self.info.recipe
        try:
            if isinstance(image, torch.Tensor):
                if not quiet:
                    self._saw("pixels", image.shape[-1], image.shape[-2])
                return tensor_pixels(image, recipe, s.fast_pixels)
            return image_pixels(
                image,
                s.max_image_pixels,
                recipe,
                s.fast_pixels,
                budget=budget or self.budget,
                on_open=None if quiet else self._saw,
                draft=s.enabled("jpeg_draft"),
                torchcodec=s.enabled("torchcodec"),
            )
        except RequestError as err:
            return err
        except Exception as exc:
            if quiet:
                raise
            return self._bug("decoding an image of", exc)

    def _saw(self, fmt: str, width: int, height: int) -> None:
        if self.settings.enabled("monitoring"):
            self.monitor.saw(fmt, width, height)

    def _bug(self, stage: str, exc: Exception) -> RequestError:
        """A fault of ours in one request (or one pass): logged with its traceback, counted, a 500."""
        logger.error("internal error while %s a request", stage, exc_info=exc)
        self.metrics.internal_error(stage.split()[0])
        return internal_error(stage, exc)

    def describe(self) -> dict:
        """Health: what serves and why."""
        health = {
            "model_version": self.archive_version,
            "checkpoint_version": self.info.version,
            "architecture": self.info.architecture,
            "num_classes": len(self.info.labels),
            "recipe": self.info.recipe.to_dict(),
            "pixels": self.settings.pixels,
            "unsafe_source": self.info.unsafe_source,
            "requests_served": self.requests_served,
            **self.engine.describe(),
            "engine_selection": self.selection.to_dict(),
            "monitoring": self.monitor.describe(),
        }
        if self.experiment is not None:
            health["experiment"] = self.experiment.describe()
        return health
