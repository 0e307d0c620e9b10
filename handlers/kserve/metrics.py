"""The request core's metrics as prometheus-client series, beside KServe's own on the model
server's /metrics: the same names, kinds and labels TorchServe exposes them with."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from ..core.metrics import COUNTER, GAUGE, METRICS, Metrics

_KINDS = {COUNTER: Counter, GAUGE: Gauge}


class PrometheusMetrics(Metrics):
    def __init__(self, model_name: str, registry=REGISTRY):
        super().__init__(model_name)
        self.series = {
            name: _KINDS.get(kind, Histogram)(name, help_, ["model_name", *labels], registry=registry)
            for name, (kind, _, labels, help_) in METRICS.items()
        }

    def emit(self, name: str, value: float, *labels: str) -> None:
        series = self.series[name].labels(self.model_name, *labels)
        if isinstance(series, Counter):
            series.inc(value)
        elif isinstance(series, Gauge):
            series.set(value)
        else:
            series.observe(value)
