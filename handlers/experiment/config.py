"""An experiment as model-config.yaml's `handler: {experiment: {...}}` describes it."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, fields

MODES = ("shadow", "split")
CANDIDATE_DIR = "candidate"  # the candidate's files inside the archive


@dataclass(frozen=True)
class ExperimentConfig:
    mode: str  # shadow or split
    candidate: str  # the candidate's checkpoint (or program), relative to the archive's root
    candidate_version: str
    primary_version: str
    sample: float = 0.1  # shadow: share of batches the candidate also runs on
    share: float = 0.5  # split: share of requests the candidate answers
    key_header: str = "x-user-id"  # split: a request's arm is a stable hash of this header (random without it)
    # split: mixed into the hash, one per experiment, so the same users are not the candidate's in
    # every experiment and a client cannot work out its arm offline
    salt: str = ""
    candidate_trust_program: bool = False  # the candidate is a program its own archive was trusted with

    @classmethod
    def from_dict(cls, doc) -> ExperimentConfig:
        if not isinstance(doc, dict):
            raise ValueError("handler setting experiment must be a mapping (mode, candidate, candidate_version, ...)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"handler setting experiment: unknown keys {unknown}; known: {sorted(known)}")
        config = cls(**{**doc, "candidate_version": str(doc.get("candidate_version")),
                        "primary_version": str(doc.get("primary_version"))})  # fmt: skip
        if config.mode not in MODES:
            raise ValueError(f"handler setting experiment.mode must be one of {MODES}, got {config.mode!r}")
        candidate = config.candidate.replace("\\", "/")
        if candidate.startswith("/") or ".." in candidate.split("/") or not candidate.startswith(f"{CANDIDATE_DIR}/"):
            raise ValueError(f"handler setting experiment.candidate must be a file under {CANDIDATE_DIR}/, "
                             f"got {config.candidate!r}")  # fmt: skip
        if not (0 < config.sample <= 1 and 0 <= config.share <= 1):
            raise ValueError("handler setting experiment: sample must be in (0, 1] and share in [0, 1]")
        return config

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def takes_candidate(key: str | None, share: float, salt: str = "") -> bool:
    """A request's arm in a split: the same key always lands in the same arm of one experiment (a
    stable hash of the experiment's salt and the key into [0, 1) against `share`); without a key,
    chance decides."""
    if key is None or key == "":
        return random.random() < share
    digest = hashlib.sha256(salt.encode() + b"\0" + key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share
