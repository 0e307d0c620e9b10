"""The handler's metrics, through TorchServe's metrics cache (declared in metrics.yaml).

In prometheus mode TorchServe exposes them on its metrics address, named as Prometheus names
them: base units (`_seconds`), counters ending in `_total`, latency as histograms (TorchServe's
fixed buckets, 0.005 to 10), and a few labels of low cardinality (model_name, protocol, stage,
outcome, error_type). Where the server's metrics configuration does not declare one, it is added
to the cache so it still reaches the logs. docs/OPERATIONS.md lists them with a PromQL line each.
"""

from __future__ import annotations

import logging

from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

COUNTER, GAUGE, HISTOGRAM = MetricTypes.COUNTER, MetricTypes.GAUGE, MetricTypes.HISTOGRAM
# name -> (type, unit, label names after model_name)
METRICS = {
    "image_classifier_request_seconds": (HISTOGRAM, "s", ["protocol"]),  # a request in the handler, end to end
    "image_classifier_stage_seconds": (HISTOGRAM, "s", ["stage"]),  # per batch: decode, inference, answer
    "image_classifier_requests_total": (
        COUNTER,
        "Count",
        ["protocol", "outcome"],
    ),  # outcome: ok, client_error, server_error
    "image_classifier_batches_total": (COUNTER, "Count", []),
    "image_classifier_batched_requests_total": (COUNTER, "Count", []),
    "image_classifier_input_errors_total": (COUNTER, "Count", ["error_type"]),
    "image_classifier_internal_errors_total": (COUNTER, "Count", ["stage"]),
    "image_classifier_oom_splits_total": (COUNTER, "Count", []),
    "image_classifier_worker_restarts_total": (COUNTER, "Count", []),
    "image_classifier_top1_probability": (HISTOGRAM, "Probability", []),
    "image_classifier_input_drift_psi": (GAUGE, "PSI", []),
    "image_classifier_confidence_drift_ks": (GAUGE, "KS", []),
    "image_classifier_mean_confidence": (GAUGE, "Probability", []),
    "image_classifier_top_class_share": (GAUGE, "Share", []),
    "image_classifier_reference_confidence": (GAUGE, "Probability", []),  # the archive profile's mean top-1
    # experiments (handlers/experiment/): shadow pairs and drops, and per arm its time and requests
    "image_classifier_shadow_pairs_total": (COUNTER, "Count", ["agree"]),
    "image_classifier_shadow_drops_total": (COUNTER, "Count", ["reason"]),
    "image_classifier_shadow_agreement": (GAUGE, "Share", []),
    "image_classifier_shadow_agreement_lower": (GAUGE, "Share", []),
    "image_classifier_shadow_top5_overlap": (GAUGE, "Share", []),
    "image_classifier_arm_seconds": (HISTOGRAM, "s", ["arm"]),
    "image_classifier_arm_requests_total": (COUNTER, "Count", ["arm", "outcome"]),
}


class HandlerMetrics:
    """One model's metrics; every call is a no-op when TorchServe gave no metrics cache."""

    def __init__(self, cache, model_name: str):
        self.cache = cache
        self.model_name = model_name

    def _emit(self, name: str, value: float, *labels: str) -> None:
        if self.cache is None:
            return
        kind, unit, names = METRICS[name]
        try:
            metric = self.cache.get_metric(name, kind)
        except Exception:  # not declared in this server's metrics.yaml
            metric = self.cache.add_metric_to_cache(name, unit, ["model_name", *names], kind)
        metric.add_or_update(value, [self.model_name, *labels])

    def request(self, protocol: str, outcome: str, seconds: float) -> None:
        self._emit("image_classifier_requests_total", 1, protocol, outcome)
        self._emit("image_classifier_request_seconds", round(seconds, 6), protocol)

    def stage(self, stage: str, seconds: float) -> None:
        self._emit("image_classifier_stage_seconds", round(seconds, 6), stage)

    def batch(self, size: int) -> None:
        self._emit("image_classifier_batches_total", 1)
        self._emit("image_classifier_batched_requests_total", size)

    def input_error(self, error_type: str) -> None:
        self._emit("image_classifier_input_errors_total", 1, error_type)

    def internal_error(self, stage: str) -> None:
        self._emit("image_classifier_internal_errors_total", 1, stage)

    def oom_splits(self, count: int) -> None:
        if count:
            self._emit("image_classifier_oom_splits_total", count)

    def worker_restart(self, count: int = 1) -> None:
        """A worker's first request: 1 when it replaced one that ended, else 0, so the series exists
        from the first worker on and a first restart is an increase Prometheus sees."""
        self._emit("image_classifier_worker_restarts_total", count)

    def answers(self, top1) -> None:
        for p in top1:
            self._emit("image_classifier_top1_probability", round(float(p), 6))

    def arm_seconds(self, arm: str, seconds: float) -> None:
        self._emit("image_classifier_arm_seconds", round(seconds, 6), arm)

    def arm_request(self, arm: str, outcome: str) -> None:
        self._emit("image_classifier_arm_requests_total", 1, arm, outcome)

    def experiment(self, pairing) -> None:
        """What the shadow's thread recorded since the last batch, and the agreement so far."""
        for event in pairing.drain():
            if event[0] == "pair":
                self._emit("image_classifier_shadow_pairs_total", 1, event[1])
            elif event[0] == "drop":
                self._emit("image_classifier_shadow_drops_total", 1, event[1])
            else:
                self.arm_seconds(event[1], event[2])
        summary = pairing.summary()
        if summary["pairs"]:
            self._emit("image_classifier_shadow_agreement", summary["top1_agreement"])
            self._emit("image_classifier_shadow_agreement_lower", summary["top1_agreement_lower_95"])
            self._emit("image_classifier_shadow_top5_overlap", summary["top5_overlap"])

    def drift(self, scores: dict) -> None:
        for key in (
            "input_drift_psi",
            "confidence_drift_ks",
            "mean_confidence",
            "top_class_share",
            "reference_confidence",
        ):
            if scores.get(key) is not None:
                self._emit(f"image_classifier_{key}", round(scores[key], 6))
