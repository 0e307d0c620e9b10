"""An experiment inside the request core: a candidate model beside the primary, from the same
archive (modeltools/experiment_archive.py), either shadowing it (the candidate runs on a sample
of answered batches, in a thread of its own with its own decoding budget, and is only compared)
or splitting traffic with it (each request's arm, from a stable hash of a header, decides which
model decodes, runs and answers it). Its faults are its own: a shadow that fails is a drop,
counted by reason, never one of the primary's errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..experiment.config import ExperimentConfig, takes_candidate
from ..experiment.pairing import Pairing
from ..experiment.shadow import Shadow
from ..model.checkpoint import load_classifier, read_info
from ..model.reference import FILE as REFERENCE_FILE
from ..model.reference import ReferenceSet
from ..model.selection import archive_evidence, choose_engine
from ..request.budget import DecodeBudget

PRIMARY, CANDIDATE = "primary", "candidate"


class Experiment:
    def __init__(self, core, folder: Path, settings: dict):
        self.config = config = ExperimentConfig.from_dict(settings)
        self.split = config.mode == "split"
        s = core.settings
        artifact = Path(folder) / config.candidate
        self.info = read_info(artifact, config.candidate_trust_program)
        options = s.engine_options()
        if not self.split:  # bounded work beside the primary: one pass at a time, one thread
            options = replace(options, cpu_streams=False)
        onnx = artifact.parent / "model.onnx"
        self.engine, self.selection = choose_engine(
            self.info.recipe, core.device, core.batch_size, options,
            lambda: load_classifier(artifact, core.device, s.enabled("channels_last"),
                                    config.candidate_trust_program)[0],
            onnx if onnx.exists() else None, ReferenceSet.load(artifact.parent / REFERENCE_FILE),
            Path(folder) / ".engine-candidate", threads=None if self.split else 1,
            needs_evidence=s.fast_pixels, **archive_evidence(artifact.parent),
        )  # fmt: skip
        self.same_recipe = self.info.recipe == core.info.recipe
        self.pairing = Pairing(core.info.labels, self.info.labels)
        self.shadow = None
        if not self.split:
            budget = DecodeBudget(s.max_image_pixels)  # its own: a large shadowed image never stalls the primary

            def decode(images: list) -> list:
                return [core.decode(image, self.info.recipe, budget, quiet=True) for image in images]

            self.shadow = Shadow(self.engine, self.pairing, config.sample, None if self.same_recipe else decode)

    def arms(self, items: list) -> list[str] | None:
        """Each request's arm in a split (None outside one)."""
        if not self.split:
            return None
        header, share, salt = self.config.key_header.lower(), self.config.share, self.config.salt
        return [CANDIDATE if takes_candidate(item.headers.get(header), share, salt) else PRIMARY for item in items]

    def after(self, work, answers: list, metrics) -> None:
        """Once a batch is answered: a split counts each arm's answers; a shadow is offered the batch."""
        if self.shadow is not None:
            self.shadow.offer(work.parts[PRIMARY], work.seconds.get(PRIMARY, 0.0))
            return
        for arm, part in work.parts.items():
            for position in part.positions:
                outcome = _outcome(answers[position].status)
                self.pairing.answered(arm, outcome)
                metrics.arm_request(arm, outcome)
            if part.probs is not None:
                self.pairing.confident(arm, part.probs.max(1).values.tolist())

    def describe(self) -> dict:
        config = self.config.to_dict()
        for key in ("sample",) if self.split else ("share", "key_header"):
            config.pop(key, None)  # the other mode's settings
        return {
            **config,
            "candidate_architecture": self.info.architecture,
            "candidate_engine": self.selection.chosen,
            "same_recipe": self.same_recipe,
            **self.pairing.summary(self.config.mode),
        }


def _outcome(status: int) -> str:
    return "ok" if status == 200 else "client_error" if status < 500 else "server_error"
