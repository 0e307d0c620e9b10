"""The handler's own metrics, through TorchServe's metrics cache (declared in metrics.yaml).

In prometheus mode TorchServe exposes them on its metrics address. If the server's metrics
configuration does not declare them, they are added to the cache so they still reach the logs.
"""

from __future__ import annotations

import logging

from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

STAGE_MS = "ImageClassifierStageMilliseconds"  # dims: ModelName, Stage (decode | inference | postprocess)
BATCHES = "ImageClassifierBatches"
BATCHED_REQUESTS = "ImageClassifierBatchedRequests"
INPUT_ERRORS = "ImageClassifierInputErrors"  # dims: ModelName, ErrorType
INTERNAL_ERRORS = "ImageClassifierInternalErrors"  # dims: ModelName, Stage (reading | decoding | running | answering)
OOM_SPLITS = "ImageClassifierOomBatchSplits"
_DIMENSIONS = {
    STAGE_MS: ["ModelName", "Stage"],
    INPUT_ERRORS: ["ModelName", "ErrorType"],
    INTERNAL_ERRORS: ["ModelName", "Stage"],
}
_UNITS = {STAGE_MS: "ms"}


class HandlerMetrics:
    """Counters for one model; every call is a no-op when TorchServe gave no metrics cache."""

    def __init__(self, cache, model_name: str):
        self.cache = cache
        self.model_name = model_name

    def _count(self, name: str, value: float, *dims: str) -> None:
        if self.cache is None:
            return
        try:
            metric = self.cache.get_metric(name, MetricTypes.COUNTER)
        except Exception:  # not declared in this server's metrics.yaml
            metric = self.cache.add_metric_to_cache(
                name, _UNITS.get(name, "Count"), _DIMENSIONS.get(name, ["ModelName"]), MetricTypes.COUNTER
            )
        metric.add_or_update(value, [self.model_name, *dims])

    def stage(self, stage: str, ms: float) -> None:
        self._count(STAGE_MS, round(ms, 3), stage)

    def batch(self, size: int) -> None:
        self._count(BATCHES, 1)
        self._count(BATCHED_REQUESTS, size)

    def input_error(self, error_type: str) -> None:
        self._count(INPUT_ERRORS, 1, error_type)

    def internal_error(self, stage: str) -> None:
        self._count(INTERNAL_ERRORS, 1, stage)

    def oom_splits(self, count: int) -> None:
        if count:
            self._count(OOM_SPLITS, count)
