"""The TorchServe handler of an experiment archive: the primary model answers, as the plain
handler does, and a candidate model beside it either shadows it or takes a share of the traffic
(handlers/experiment/). `scripts/build_mar.py --candidate` and `tsctl experiment` make such
archives; its root entry file subclasses ExperimentClassifier."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from handlers.experiment.config import ExperimentConfig, takes_candidate
from handlers.experiment.pairing import Pairing
from handlers.experiment.shadow import Shadow
from handlers.image_classifier import ImageClassifier
from handlers.model.checkpoint import load_classifier, read_info
from handlers.model.reference import FILE as REFERENCE_FILE
from handlers.model.reference import ReferenceSet
from handlers.model.selection import archive_evidence, choose_engine
from handlers.request.batch import Batch
from handlers.request.errors import RequestError


class ExperimentClassifier(ImageClassifier):
    def initialize(self, context):
        super().initialize(context)
        self.experiment = config = ExperimentConfig.from_dict(self.settings.experiment)
        # answers say which model gave them: the primary's version, or in a split the candidate's
        self.archive_version, self.version = self.version, config.primary_version
        folder = Path(context.system_properties["model_dir"])
        artifact = folder / config.candidate
        self.candidate_info = read_info(artifact, config.candidate_trust_program)
        options = self.settings.engine_options()
        shadow = config.mode == "shadow"
        if shadow:  # bounded work beside the primary: one pass at a time, one thread
            options = replace(options, cpu_streams=False)
        onnx = artifact.parent / "model.onnx"
        self.candidate_engine, self.candidate_selection = choose_engine(
            self.candidate_info.recipe, self.device, int(context.system_properties.get("batch_size") or 1), options,
            lambda: load_classifier(artifact, self.device, self.settings.enabled("channels_last"),
                                    config.candidate_trust_program)[0],
            onnx if onnx.exists() else None, ReferenceSet.load(artifact.parent / REFERENCE_FILE),
            folder / ".engine-candidate", threads=1 if shadow else None,
            needs_evidence=self.settings.fast_pixels, **archive_evidence(artifact.parent),
        )  # fmt: skip
        self.same_recipe = self.candidate_info.recipe == self.info.recipe
        self.pairing = Pairing(self.info.labels, self.candidate_info.labels)
        decode = None if self.same_recipe else self._decode_for_candidate
        self.shadow = Shadow(self.candidate_engine, self.pairing, config.sample, decode) if shadow else None
        if getattr(self, "reporter", None) is not None:  # pairs reach Prometheus within a second
            self.reporter.also.append(lambda metrics: metrics.experiment(self.pairing))

    def _decode_for_candidate(self, images: list) -> list:
        return [self._decode(image, self.candidate_info.recipe) for image in images]

    # -- shadow: the primary's path, then the candidate on a sample -----------------------------
    # -- split: each request's arm decides which model decodes, runs and answers it ------------
    def preprocess(self, data):
        if self.shadow is not None:
            return super().preprocess(data)
        self.started = time.perf_counter()
        whole = Batch.read(list(self.decoders.map(self._read, range(len(data)), data)))
        header = self.experiment.key_header.lower()
        arms = [takes_candidate(self._headers(i).get(header), self.experiment.share, self.experiment.salt)
                for i in range(len(data))]  # fmt: skip
        parts = {}
        for arm, recipe in (("primary", self.info.recipe), ("candidate", self.candidate_info.recipe)):
            part = whole.subset([i for i, cand in enumerate(arms) if cand == (arm == "candidate")])
            part.add_pixels(self._decode_all(part.images(), recipe), self.device)
            parts[arm] = part
            for err in part.errors:
                if err is not None and err.code < 500:
                    self.metrics.input_error(err.type)
        self.metrics.batch(len(data))
        return parts

    def inference(self, batch, *args, **kwargs):
        if self.shadow is not None:
            start = time.perf_counter()
            batch = super().inference(batch)
            self.primary_seconds = time.perf_counter() - start
            return batch
        for arm, part in batch.items():
            engine = self.engine if arm == "primary" else self.candidate_engine
            if part.pixels is not None:
                start = time.perf_counter()
                try:
                    part.logits = engine.run(part.pixels).logits
                except Exception as exc:
                    part.fail_pending(self._bug("running the model on", exc))
                self.metrics.arm_seconds(arm, time.perf_counter() - start)
        return batch

    def postprocess(self, batch):
        if self.shadow is not None:
            out = super().postprocess(batch)
            self.shadow.offer(batch, self.primary_seconds)
        else:
            out = [None] * sum(len(part) for part in batch.values())
            for arm, part in batch.items():
                labels, version = ((self.info.labels, self.version) if arm == "primary"
                                   else (self.candidate_info.labels, self.experiment.candidate_version))  # fmt: skip
                for position, body, error in zip(part.positions, self.respond(part, labels, version), part.errors):
                    out[position] = body
                    outcome = "ok" if error is None else _outcome(error)
                    self.metrics.arm_request(arm, outcome)
                    self.pairing.answered(arm, outcome)
                if part.probs is not None:
                    self.pairing.confident(arm, part.probs.max(1).values.tolist())
        self.metrics.experiment(self.pairing)
        return out

    def describe_handle(self):
        health = super().describe_handle()
        health["model_version"] = self.archive_version
        config = self.experiment.to_dict()
        for key in ("share", "key_header") if self.experiment.mode == "shadow" else ("sample",):
            config.pop(key, None)  # the other mode's settings
        health["experiment"] = {
            **config,
            "candidate_architecture": self.candidate_info.architecture,
            "candidate_engine": self.candidate_selection.chosen,
            "same_recipe": self.same_recipe,
            **self.pairing.summary(self.experiment.mode),
        }
        return health


def _outcome(error: RequestError) -> str:
    return "client_error" if error.code < 500 else "server_error"
