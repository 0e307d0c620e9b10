"""What the model is fed and how sure it is, over a window of recent images, against the reference
profile the archive carries (handlers/model/reference.py): the statistics a silent failure moves
while every answer is still a 200.

Per batch, from tensors the handler already holds: each image's per-channel mean of its served
pixels (a strided sample of them), in the recipe's normalised units; the top-1 probability,
margin and entropy of each answer; its top-1 class; the format and size of each image as sent.

Two drift scores compare the window with the reference:
- input drift, the population stability index (PSI) of the per-image channel means, the worst of
  the three channels, over fixed bins of the normalised range: it sees a channel order swapped
  (BGR sent for RGB), an exposure change, or pre-resized thumbnails whose statistics differ, and
  it needs no distribution assumptions; a PSI above 0.25 is the usual "significant shift".
- confidence drift, the two-sample Kolmogorov-Smirnov statistic between the window's and the
  reference's top-1 probabilities: distribution-free, works on the small samples a reference set
  is, and is the largest gap between the two cumulative distributions, so a collapse of
  confidence shows at once.
A profile of fewer than MIN_PROFILE images cannot carry a signal (PSI of a few hundred live
images against a dozen reference values is noise that passes 0.25 on healthy traffic): then no
drift score is reported until the worker has pinned its first WINDOW live images as the profile
(drift from what traffic looked like when it started). build_mar.py --profile-images (or
--verify-images) gives the archive a profile of the user's own photos instead.
Classes are reported as the share of the window's most frequent top-1 (a model stuck on one
class), not as a chi-square: over a thousand classes, a window of a few hundred answers and a
reference of a few photos leave a chi-square no power.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

WINDOW = 500  # images (inputs) and answers (predictions) the scores look at
MIN_WINDOW = 20  # below this many, no score is reported (None)
MIN_PROFILE = 100  # a reference profile with fewer images gives no drift score: it is pinned from live traffic
PSI_BINS = np.linspace(-2.5, 2.5, 21)  # normalised units; values beyond fall in the end bins
PSI_FLOOR = 1e-3  # a bin's smallest share: a bin empty on one side stays finite
SAMPLE_STRIDE = 4  # every 4th row and column of a crop: 1/16 of its pixels
REPORT_EVERY_S = 1.0  # the scores and the answers' histogram are reported this often, off the request path
REPORT_SAMPLE = 64  # at most this many answers' top-1 probabilities go into the histogram per report
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """The reference: per-image channel means [G, 3] (normalised) and top-1 probabilities [G]."""

    channel_means: np.ndarray
    top1: np.ndarray
    source: str = "archive"  # archive, or live: the worker's first WINDOW images

    @property
    def images(self) -> int:
        return len(self.top1)

    @property
    def usable(self) -> bool:
        return self.images >= MIN_PROFILE

    @classmethod
    def of(cls, reference, mean, std) -> Profile | None:
        """The profile an archive's ReferenceSet carries, or, from an older archive, the one its
        verification photos give; None without a reference."""
        if reference is None:
            return None
        if reference.profile_top1 is not None:
            return cls(reference.profile_channel_means.numpy(), reference.profile_top1.numpy())
        top1 = torch.softmax(reference.logits.float(), 1).max(1).values.numpy()
        return cls(channel_means(reference.pixels, mean, std), top1)


def channel_means(pixels: torch.Tensor, mean, std) -> np.ndarray:
    """uint8 [N, 3, H, W] -> [N, 3] per-image channel means of a strided sample, in the recipe's
    normalised units ((x / 255 - mean) / std)."""
    sample = pixels[:, :, ::SAMPLE_STRIDE, ::SAMPLE_STRIDE].float().mean(dim=(2, 3)).cpu().numpy() / 255.0
    return (sample - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def answer_stats(probs: torch.Tensor) -> dict:
    """softmax rows [N, C] -> per row: top-1 class and probability, margin to the second, entropy (nats)."""
    top = probs.topk(min(2, probs.shape[1]), dim=1)
    values = top.values.cpu().numpy()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).cpu().numpy()
    margin = values[:, 0] - (values[:, 1] if values.shape[1] > 1 else 0.0)
    return {"top1": values[:, 0], "margin": margin, "entropy": entropy, "classes": top.indices[:, 0].cpu().numpy()}


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of `live` against `reference` over PSI_BINS (each bin's share
    at least PSI_FLOOR): 0 for the same distribution, above 0.25 for a significant shift."""
    edges = np.concatenate([[-np.inf], PSI_BINS[1:-1], [np.inf]])
    ref = np.maximum(np.histogram(reference, edges)[0] / len(reference), PSI_FLOOR)
    cur = np.maximum(np.histogram(live, edges)[0] / len(live), PSI_FLOOR)
    return float(((cur - ref) * np.log(cur / ref)).sum())


def ks(reference: np.ndarray, live: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    values = np.sort(np.concatenate([reference, live]))
    ref = np.searchsorted(np.sort(reference), values, side="right") / len(reference)
    cur = np.searchsorted(np.sort(live), values, side="right") / len(live)
    return float(np.abs(ref - cur).max())


def _rounded(values: np.ndarray, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


class Monitor:
    """The window of recent inputs and answers, and its scores against the reference profile."""

    def __init__(self, profile: Profile | None, mean, std, window: int = WINDOW, labels=None):
        self.profile, self.mean, self.std = profile, mean, std
        self.labels = list(labels) if labels is not None else None  # top classes by name in health
        self.inputs = deque(maxlen=window)  # [3] channel means per image
        self.top1 = deque(maxlen=window)
        self.margin = deque(maxlen=window)
        self.entropy = deque(maxlen=window)
        self.classes = deque(maxlen=window)
        self.formats = Counter()
        self.sizes = deque(maxlen=window)  # (width, height) as sent
        self.unreported = []  # top-1 probabilities not yet reported as metrics
        self.pinned_at = None  # when a live profile was pinned
        self._lock = threading.Lock()

    def _drift_state(self) -> str:
        if self.profile is not None and self.profile.usable:
            if self.profile.source == "live":
                pinned = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.pinned_at))
                return f"on: against the first {self.profile.images} live images, pinned at {pinned}"
            return f"on: against the archive's profile of {self.profile.images} images"
        held = self.profile.images if self.profile is not None else 0
        return (f"off until {WINDOW} live images are pinned as the profile: the archive's holds {held} images "
                f"(at least {MIN_PROFILE} carry a signal; build_mar.py --profile-images DIR)")  # fmt: skip

    def saw(self, fmt: str, width: int, height: int) -> None:
        """One image as it was sent (called from the decoding threads)."""
        with self._lock:
            self.formats[fmt] += 1
            self.sizes.append((width, height))

    def add_inputs(self, pixels: torch.Tensor) -> None:
        """A batch's served pixels, uint8 [N, 3, H, W]."""
        means = channel_means(pixels, self.mean, self.std)
        with self._lock:
            self.inputs.extend(means)

    def add_answers(self, probs: torch.Tensor) -> dict:
        stats = answer_stats(probs)
        with self._lock:
            self.top1.extend(stats["top1"])
            self.margin.extend(stats["margin"])
            self.entropy.extend(stats["entropy"])
            self.classes.extend(stats["classes"].tolist())
            self.unreported.extend(stats["top1"].tolist())
        return stats

    def take_unreported(self) -> list:
        """The top-1 probabilities added since the last call."""
        with self._lock:
            taken, self.unreported = self.unreported, []
        return taken

    def scores(self) -> dict:
        """The drift scores and window statistics now (None where the window is too short, or
        the profile too small to carry a signal)."""
        with self._lock:
            inputs, top1 = np.array(self.inputs), np.array(self.top1)
            classes = list(self.classes)
            if (self.profile is None or not self.profile.usable) and min(len(inputs), len(top1)) >= WINDOW:
                self.profile = Profile(inputs.copy(), top1.copy(), "live")  # drift from here on
                self.pinned_at = time.time()
        out = {"input_drift_psi": None, "confidence_drift_ks": None, "top_class_share": None,
               "mean_confidence": None, "reference_confidence": None}  # fmt: skip
        if len(top1) >= MIN_WINDOW:
            out["mean_confidence"] = float(top1.mean())
            out["top_class_share"] = Counter(classes).most_common(1)[0][1] / len(classes)
        if self.profile is None or not self.profile.usable:
            return out
        out["reference_confidence"] = float(self.profile.top1.mean())
        if len(inputs) >= MIN_WINDOW:
            out["input_drift_psi"] = max(psi(self.profile.channel_means[:, c], inputs[:, c]) for c in range(3))
        if len(top1) >= MIN_WINDOW:
            out["confidence_drift_ks"] = ks(self.profile.top1, top1)
        return out

    def describe(self) -> dict:
        """For health: the window against the reference."""
        scores = self.scores()
        with self._lock:
            inputs = np.array(self.inputs)
            window = {
                "images": len(self.inputs),
                "answers": len(self.top1),
                "channel_means": _rounded(inputs.mean(0)) if len(inputs) else None,
                "mean_margin": round(float(np.mean(self.margin)), 4) if self.margin else None,
                "mean_entropy": round(float(np.mean(self.entropy)), 4) if self.entropy else None,
                "formats": dict(self.formats),
                "median_size": [int(np.median([s[i] for s in self.sizes])) for i in (0, 1)] if self.sizes else None,
                "top_classes": [
                    {"label": self.labels[c] if self.labels else c, "share": round(n / len(self.classes), 4)}
                    for c, n in Counter(self.classes).most_common(5)
                ],
            }
        reference = {"images": 0, "drift": self._drift_state()}
        if self.profile is not None:
            reference.update(images=self.profile.images, source=self.profile.source,
                             mean_confidence=round(float(self.profile.top1.mean()), 4),
                             channel_means=_rounded(self.profile.channel_means.mean(0)))  # fmt: skip
        return {"window": window, "reference": reference,
                **{k: (round(v, 4) if v is not None else None) for k, v in scores.items()}}  # fmt: skip


class Reporter:
    """Reports a Monitor as metrics from a thread of its own, once every REPORT_EVERY_S while
    answers arrive: the answers' top-1 probabilities into their histogram (an even sample of at
    most REPORT_SAMPLE of them, so its buckets' shares are the distribution's, not its counts the
    requests'), then the scores as gauges. The request path only adds to the window
    (Monitor.add_inputs, add_answers): the scores over the window, and a metric line per image,
    would otherwise cost a batch more than 1% of its inference (`make bench`, monitoring_cost).
    The gauges are at most a second behind the traffic."""

    def __init__(self, monitor: Monitor, metrics: Callable, every_s: float = REPORT_EVERY_S):
        self.monitor, self.metrics, self.every_s = monitor, metrics, every_s  # metrics() -> HandlerMetrics
        # more to report on every tick, whatever arrived: fn(HandlerMetrics) (an experiment's pairs,
        # which its shadow thread records after the answers have left)
        self.also: list[Callable] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-report", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.report()
        self.report()

    def report(self) -> bool:
        """Reports what arrived since the last report; False when nothing did."""
        for report in self.also:
            try:
                report(self.metrics())
            except Exception:
                logger.exception("reporting metrics failed")
        top1 = self.monitor.take_unreported()
        if not top1:
            return False
        try:
            metrics = self.metrics()
            metrics.answers(top1[:: -(-len(top1) // REPORT_SAMPLE)])
            metrics.drift(self.monitor.scores())
        except Exception:  # a bug here must not stop the reports that follow, nor any request
            logger.exception("reporting the monitoring metrics failed")
        return True
