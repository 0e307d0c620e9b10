"""The archive's reference photos: what every backend is verified against before it may serve.

Written at archive time by scripts/build_mar.py: real photos decoded exactly as the handler
serves them (uint8 crops of the recipe) and the eager float32 model's logits on them. A backend
or precision is verified when it gives every photo the same top-1 and each probability within
TOLERANCE of the reference (a photo whose two top classes are closer than that in the reference
may swap them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FILE = "reference.pt"
# Largest change of any probability a backend may show against eager float32: float32 runtimes
# differ by rounding only; reduced precisions (bfloat16, float16) by their mantissa, int8 by its
# quantization. What a reduced precision costs is measured on the archive's verification set
# (handlers/model/verification.py); this check only shows that this host runs it as measured.
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.03, "float16": 0.03, "int8": 0.1}


@dataclass(frozen=True)
class Verdict:
    top1_agree: int
    images: int
    max_prob_diff: float
    tolerance: float

    @property
    def verified(self) -> bool:
        return self.top1_agree == self.images and self.max_prob_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {
            "verified": self.verified,
            "top1_agree": f"{self.top1_agree}/{self.images}",
            "max_prob_diff": round(self.max_prob_diff, 6),
            "tolerance": self.tolerance,
        }


@dataclass(frozen=True)
class ReferenceSet:
    pixels: torch.Tensor  # uint8 [G, 3, H, W], as served
    logits: torch.Tensor  # float32 [G, classes], eager float32
    names: tuple[str, ...]
    # the monitoring profile (handlers/monitoring.py), over every photo given at archive time:
    profile_channel_means: torch.Tensor | None = None  # float32 [P, 3], normalised
    profile_top1: torch.Tensor | None = None  # float32 [P]

    @classmethod
    def load(cls, path) -> ReferenceSet | None:
        """The set in `path`, or None when the archive carries none (weights_only: tensors and names)."""
        path = Path(path)
        if not path.exists():
            return None
        doc = torch.load(path, map_location="cpu", weights_only=True)
        return cls(doc["pixels"], doc["logits"].float(), tuple(doc["names"]), doc.get("profile_channel_means"),
                   doc.get("profile_top1"))  # fmt: skip

    def save(self, path) -> None:
        doc = {"pixels": self.pixels.contiguous(), "logits": self.logits, "names": list(self.names)}
        if self.profile_top1 is not None:
            doc.update(profile_channel_means=self.profile_channel_means, profile_top1=self.profile_top1)
        torch.save(doc, path)

    def judge(self, logits: torch.Tensor, precision: str) -> Verdict:
        """How `logits` (a backend's, on `pixels`) compare with the reference's."""
        expected, actual = torch.softmax(self.logits, 1), torch.softmax(logits.float().cpu(), 1)
        top, got = expected.argmax(1, keepdim=True), actual.argmax(1, keepdim=True)
        tie = (expected.gather(1, top) - expected.gather(1, got))[:, 0] <= TOLERANCE[precision]
        agree = int(((top == got)[:, 0] | tie).sum())
        diff = float((expected - actual).abs().max())
        return Verdict(agree, len(self.pixels), diff, TOLERANCE[precision])
