"""The request core's metrics (handlers/core/metrics.py) through TorchServe's metrics cache,
declared in metrics.yaml. In prometheus mode TorchServe exposes them on its metrics address;
where the server's metrics configuration does not declare one, it is added to the cache so it
still reaches the logs."""

from __future__ import annotations

from ts.metrics.metric_type_enum import MetricTypes

from handlers.core.metrics import COUNTER, GAUGE, HISTOGRAM, METRICS, Metrics

_KINDS = {COUNTER: MetricTypes.COUNTER, GAUGE: MetricTypes.GAUGE, HISTOGRAM: MetricTypes.HISTOGRAM}


class HandlerMetrics(Metrics):
    """One model's metrics in TorchServe's cache; a no-op when TorchServe gave no cache."""

    def __init__(self, cache, model_name: str):
        super().__init__(model_name)
        self.cache = cache

    def emit(self, name: str, value: float, *labels: str) -> None:
        if self.cache is None:
            return
        kind, unit, names, _ = METRICS[name]
        try:
            metric = self.cache.get_metric(name, _KINDS[kind])
        except Exception:  # not declared in this server's metrics.yaml
            metric = self.cache.add_metric_to_cache(name, unit, ["model_name", *names], _KINDS[kind])
        metric.add_or_update(value, [self.model_name, *labels])
