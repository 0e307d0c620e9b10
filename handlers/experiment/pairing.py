"""Two answers to the same image, the primary's and the candidate's, compared: top-1 agreement
(with a Wilson lower bound), top-5 overlap, the change in the probability of the primary's top-1,
each arm's confidence and latency, and the candidate's drops by reason. Labels are compared by
name, so a candidate with another label list is compared on what it answers."""

from __future__ import annotations

import math
import threading
from collections import Counter, deque

import torch

WINDOW = 2000  # pairs the means are taken over


def wilson_lower(successes: int, trials: int, z: float = 1.96) -> float:
    """The lower bound of the Wilson score interval (95% by default) of a proportion."""
    if trials == 0:
        return 0.0
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / (1 + z * z / trials)


class Pairing:
    """Paired answers so far, and the metric events not yet emitted (drained by the handler's
    thread: the shadow's thread never emits metrics itself)."""

    def __init__(self, primary_labels, candidate_labels):
        self.primary_labels, self.candidate_labels = list(primary_labels), list(candidate_labels)
        self.candidate_index = {label: i for i, label in enumerate(self.candidate_labels)}
        self.pairs = self.agree = 0
        self.overlap = deque(maxlen=WINDOW)
        self.prob_diff = deque(maxlen=WINDOW)
        self.confidence = {"primary": deque(maxlen=WINDOW), "candidate": deque(maxlen=WINDOW)}
        self.seconds = {"primary": deque(maxlen=WINDOW), "candidate": deque(maxlen=WINDOW)}
        self.drops = Counter()
        self.requests = {"primary": Counter(), "candidate": Counter()}  # split: answers per arm by outcome
        self._events = []
        self._lock = threading.Lock()

    def record(self, primary: torch.Tensor, candidate: torch.Tensor, primary_s: float, candidate_s: float) -> None:
        """Probabilities [N, C] of the same N images by each model, and each model's seconds for them."""
        p5, c5 = primary.topk(min(5, primary.shape[1]), 1), candidate.topk(min(5, candidate.shape[1]), 1)
        with self._lock:
            for i in range(len(primary)):
                p_labels = [self.primary_labels[j] for j in p5.indices[i].tolist()]
                c_labels = [self.candidate_labels[j] for j in c5.indices[i].tolist()]
                same = p_labels[0] == c_labels[0]
                self.pairs += 1
                self.agree += same
                self.overlap.append(len(set(p_labels) & set(c_labels)) / len(p_labels))
                mine = self.candidate_index.get(p_labels[0])
                if mine is not None:
                    self.prob_diff.append(float(candidate[i, mine]) - float(p5.values[i, 0]))
                self.confidence["primary"].append(float(p5.values[i, 0]))
                self.confidence["candidate"].append(float(c5.values[i, 0]))
                self._events.append(("pair", "true" if same else "false"))
            for arm, seconds in (("primary", primary_s), ("candidate", candidate_s)):
                self.seconds[arm].append(seconds)
                self._events.append(("seconds", arm, seconds))

    def answered(self, arm: str, outcome: str) -> None:
        """Split: one request answered by `arm` (ok, client_error, server_error)."""
        with self._lock:
            self.requests[arm][outcome] += 1

    def confident(self, arm: str, top1: list[float]) -> None:
        """Split: the top-1 probabilities `arm` answered with."""
        with self._lock:
            self.confidence[arm].extend(top1)

    def drop(self, reason: str) -> None:
        with self._lock:
            self.drops[reason] += 1
            self._events.append(("drop", reason))

    def drain(self) -> list:
        with self._lock:
            events, self._events = self._events, []
            return events

    def summary(self, mode: str = "shadow") -> dict:
        """What the experiment has seen: a shadow's pairs and their agreement (None before the
        first pair), or a split's answers per arm; each arm's mean top-1 probability and time."""
        with self._lock:

            def mean(values):
                return round(sum(values) / len(values), 4) if values else None

            common = {
                "confidence": {arm: mean(v) for arm, v in self.confidence.items()},
                "seconds_per_batch": {arm: mean(v) for arm, v in self.seconds.items()},
            }
            if mode == "split":
                return {"requests": {arm: dict(c) for arm, c in self.requests.items()}, **common}
            return {
                "pairs": self.pairs,
                "top1_agreement": round(self.agree / self.pairs, 4) if self.pairs else None,
                "top1_agreement_lower_95": round(wilson_lower(self.agree, self.pairs), 4) if self.pairs else None,
                "top5_overlap": mean(self.overlap),
                "primary_top1_probability_change": mean(self.prob_diff),
                **common,
                "dropped": dict(self.drops),
            }
