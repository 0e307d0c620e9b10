"""The request core's metrics, named once for every server (docs/OPERATIONS.md lists them).

Prometheus conventions: base units (`_seconds`), counters ending in `_total`, latency as
histograms (buckets 0.005 to 10 s, TorchServe's and prometheus-client's defaults), a few labels
of low cardinality after model_name. A server implements `emit`: TorchServe through its metrics
cache (handlers/metrics.py), KServe's model server through prometheus-client
(handlers/kserve/metrics.py); `Metrics` itself emits nothing.
"""

from __future__ import annotations

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
# name -> (kind, unit, label names after model_name, help)
METRICS = {
    "image_classifier_request_seconds": (HISTOGRAM, "s", ["protocol"], "A request in the handler, end to end"),
    "image_classifier_stage_seconds": (HISTOGRAM, "s", ["stage"], "Per batch: decode, inference, answer"),
    "image_classifier_requests_total": (COUNTER, "Count", ["protocol", "outcome"],
                                        "Requests answered, by outcome: ok, client_error, server_error"),
    "image_classifier_batches_total": (COUNTER, "Count", [], "Batches handled"),
    "image_classifier_batched_requests_total": (COUNTER, "Count", [], "Requests in those batches"),
    "image_classifier_input_errors_total": (COUNTER, "Count", ["error_type"], "Requests refused, by error type"),
    "image_classifier_internal_errors_total": (COUNTER, "Count", ["stage"], "Server faults, by stage"),
    "image_classifier_oom_splits_total": (COUNTER, "Count", [], "Batches split after running out of memory"),
    "image_classifier_worker_restarts_total": (COUNTER, "Count", [], "Workers that replaced one that ended"),
    "image_classifier_top1_probability": (HISTOGRAM, "Probability", [], "Top-1 probability of answers (sampled)"),
    "image_classifier_input_drift_psi": (GAUGE, "PSI", [], "Input drift against the archive's profile"),
    "image_classifier_confidence_drift_ks": (GAUGE, "KS", [], "Confidence drift against the archive's profile"),
    "image_classifier_mean_confidence": (GAUGE, "Probability", [], "Mean top-1 probability of recent answers"),
    "image_classifier_top_class_share": (GAUGE, "Share", [], "Share of recent answers in the most frequent class"),
    "image_classifier_reference_confidence": (GAUGE, "Probability", [], "The profile's mean top-1 probability"),
    # experiments (handlers/core/experiment.py): shadow pairs and drops, and per arm its time and requests
    "image_classifier_shadow_pairs_total": (COUNTER, "Count", ["agree"], "Shadow answers compared"),
    "image_classifier_shadow_drops_total": (COUNTER, "Count", ["reason"], "Sampled batches the shadow skipped"),
    "image_classifier_shadow_agreement": (GAUGE, "Share", [], "Top-1 agreement of the shadow's pairs"),
    "image_classifier_shadow_agreement_lower": (GAUGE, "Share", [], "Its Wilson 95% lower bound"),
    "image_classifier_shadow_top5_overlap": (GAUGE, "Share", [], "Top-5 overlap of the shadow's pairs"),
    "image_classifier_arm_seconds": (HISTOGRAM, "s", ["arm"], "An experiment arm's model time per batch"),
    "image_classifier_arm_requests_total": (COUNTER, "Count", ["arm", "outcome"], "Requests per experiment arm"),
}  # fmt: skip
DRIFT_KEYS = ("input_drift_psi", "confidence_drift_ks", "mean_confidence", "top_class_share", "reference_confidence")


class Metrics:
    """One model's metrics. Subclasses implement `emit`; this one drops everything."""

    def __init__(self, model_name: str = ""):
        self.model_name = model_name

    def emit(self, name: str, value: float, *labels: str) -> None:
        """Count, set or observe `value` on metric `name` (METRICS) for these label values."""

    def request(self, protocol: str, outcome: str, seconds: float) -> None:
        self.emit("image_classifier_requests_total", 1, protocol, outcome)
        self.emit("image_classifier_request_seconds", round(seconds, 6), protocol)

    def stage(self, stage: str, seconds: float) -> None:
        self.emit("image_classifier_stage_seconds", round(seconds, 6), stage)

    def batch(self, size: int) -> None:
        self.emit("image_classifier_batches_total", 1)
        self.emit("image_classifier_batched_requests_total", size)

    def input_error(self, error_type: str) -> None:
        self.emit("image_classifier_input_errors_total", 1, error_type)

    def internal_error(self, stage: str) -> None:
        self.emit("image_classifier_internal_errors_total", 1, stage)

    def oom_splits(self, count: int) -> None:
        if count:
            self.emit("image_classifier_oom_splits_total", count)

    def worker_restart(self, count: int = 1) -> None:
        """A worker's first request: 1 when it replaced one that ended, else 0, so the series exists
        from the first worker on and a first restart is an increase Prometheus sees."""
        self.emit("image_classifier_worker_restarts_total", count)

    def answers(self, top1) -> None:
        for p in top1:
            self.emit("image_classifier_top1_probability", round(float(p), 6))

    def arm_seconds(self, arm: str, seconds: float) -> None:
        self.emit("image_classifier_arm_seconds", round(seconds, 6), arm)

    def arm_request(self, arm: str, outcome: str) -> None:
        self.emit("image_classifier_arm_requests_total", 1, arm, outcome)

    def experiment(self, pairing) -> None:
        """What the shadow's thread recorded since the last report, and the agreement so far."""
        for event in pairing.drain():
            if event[0] == "pair":
                self.emit("image_classifier_shadow_pairs_total", 1, event[1])
            elif event[0] == "drop":
                self.emit("image_classifier_shadow_drops_total", 1, event[1])
            else:
                self.arm_seconds(event[1], event[2])
        summary = pairing.summary()
        if summary["pairs"]:
            self.emit("image_classifier_shadow_agreement", summary["top1_agreement"])
            self.emit("image_classifier_shadow_agreement_lower", summary["top1_agreement_lower_95"])
            self.emit("image_classifier_shadow_top5_overlap", summary["top5_overlap"])

    def drift(self, scores: dict) -> None:
        for key in DRIFT_KEYS:
            if scores.get(key) is not None:
                self.emit(f"image_classifier_{key}", round(scores[key], 6))
