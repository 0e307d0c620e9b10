"""The archive's verification record: what serving anything but the float32 answers costs.

Written at archive time by scripts/build_mar.py --verify-images (modeltools/verify.py): on the
user's own photos (hundreds), each backend and precision the archive may serve with, on the
pixels it serves (`pixels: exact` or `fast`), against the eager float32 model on the exact
pixels (the library's eval transform): top-1 agreement with its Wilson 95% lower bound, and the
largest and mean change of the probability of the float32 top-1 class. A reduced precision
(bfloat16, float16, int8) or the fast pixel path serves only with a candidate whose agreement
reaches the archive's `min_agreement`; health shows the evidence of what serves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from handlers.experiment.pairing import wilson_lower

FILE = "verification.json"


@dataclass(frozen=True)
class Agreement:
    """A candidate's answers against the float32 answers on the same images."""

    images: int
    top1_agree: int
    max_top1_prob_change: float  # of the float32 top-1 class's probability
    mean_top1_prob_change: float

    @classmethod
    def of(cls, reference_logits: torch.Tensor, logits: torch.Tensor) -> Agreement:
        expected, actual = torch.softmax(reference_logits.float(), 1), torch.softmax(logits.float().cpu(), 1)
        top = expected.argmax(1, keepdim=True)
        change = (actual.gather(1, top) - expected.gather(1, top)).abs()[:, 0]
        return cls(
            len(expected),
            int((actual.argmax(1) == top[:, 0]).sum()),
            round(float(change.max()), 6),
            round(float(change.mean()), 6),
        )

    @property
    def agreement(self) -> float:
        return self.top1_agree / self.images if self.images else 0.0

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "top1_agreement": round(self.agreement, 4),
            "top1_agreement_lower_95": round(wilson_lower(self.top1_agree, self.images), 4),
        }

    def summary(self) -> str:
        return (
            f"top-1 agrees on {self.top1_agree}/{self.images} ({self.agreement:.3f}, Wilson 95% lower bound "
            f"{wilson_lower(self.top1_agree, self.images):.3f}); top-1 probability changes by up to "
            f"{self.max_top1_prob_change:.3f} (mean {self.mean_top1_prob_change:.4f})"
        )


@dataclass
class VerificationRecord:
    images: int  # photos in the verification set
    min_agreement: float
    pixels: str  # the pixel path measured: exact or fast
    candidates: dict = field(default_factory=dict)  # label -> Agreement.to_dict() + passed, or {"error": ...}
    source: str = ""  # the folder's name, as given at archive time
    int8: dict | None = None  # how the int8 file was made: calibration images, layers kept in float32

    def passed(self, label: str) -> bool:
        return bool(self.candidates.get(label, {}).get("passed"))

    def why_not(self, label: str) -> str:
        """Why `label` may not serve under this record (for health's `unavailable`)."""
        entry = self.candidates.get(label)
        if entry is None:
            return f"not measured on the archive's verification set ({self.images} photos, pixels {self.pixels})"
        if "error" in entry:
            return f"failed on the verification set: {entry['error']}"
        return (
            f"top-1 agreement {entry['top1_agreement']} with the float32 answers on {self.images} photos is below "
            f"min_agreement {self.min_agreement}"
        )

    def evidence(self, label: str) -> dict | None:
        entry = self.candidates.get(label)
        if entry is None:
            return None
        return {"verification_images": self.images, "pixels": self.pixels, "min_agreement": self.min_agreement,
                **entry}  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> VerificationRecord | None:
        """The record in `path`, or None when the archive carries none."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path.name} in the archive is not a verification record: {exc}") from None
