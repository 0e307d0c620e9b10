"""The handler in-process, driven the way TorchServe's worker drives it (its own Context class)."""

from __future__ import annotations

from pathlib import Path

import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handlers.core.metrics import Metrics
from handlers.image_classifier import ImageClassifier

METRICS_YAML = Path(__file__).resolve().parents[1] / "metrics.yaml"  # the one config.properties names


def make_context(
    model_dir: Path,
    checkpoint_name: str,
    config: dict | None = None,
    batch_size: int = 8,
    gpu=None,
    version: str = "1.0",
):
    manifest = {"model": {"modelName": "test", "serializedFile": checkpoint_name, "modelVersion": version}}
    return Context("test", str(model_dir), manifest, batch_size, gpu, "0.12.0", model_yaml_config=config or {})


def load_handler(
    checkpoint: Path, tmp_dir: Path, config: dict | None = None, batch_size: int = 8, gpu=None, version: str = "1.0"
):
    """Lay out a model dir like an unpacked .mar and initialize the handler from it."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    target = tmp_dir / checkpoint.name
    if not target.exists():
        target.symlink_to(checkpoint.resolve())
    (tmp_dir / "model-config.yaml").write_text(yaml.safe_dump(config or {}))
    handler = ImageClassifier()
    handler.initialize(make_context(tmp_dir, checkpoint.name, config, batch_size, gpu, version))
    return handler


class Answer:
    def __init__(self, status: int, phrase: str, body, headers: dict | None = None):
        self.status, self.phrase, self.body, self.headers = status, phrase, body, headers or {}

    def __repr__(self):
        return f"Answer({self.status}, {self.body!r:.120})"


def run_batch(handler, items: list[dict], headers: list[dict] | None = None) -> list[Answer]:
    """One TorchServe batch through handle(); returns each request's status and body."""
    context = Context("test", "", {"model": {}}, len(items), None, "0.12.0")
    context.request_processor = [RequestProcessor(h) for h in (headers or [{} for _ in items])]
    context.request_ids = {i: f"req-{i}" for i in range(len(items))}
    context.metrics = _metrics()
    context.metrics.request_ids = context.request_ids  # as Service.predict does
    out = handler.handle(items, context)
    assert isinstance(out, list) and len(out) == len(items)
    answers = []
    for idx, body in enumerate(out):
        code, phrase = context.get_response_status(idx)
        answers.append(Answer(code or 200, phrase or "", body, context.get_response_headers(idx)))
    return answers


def _metrics():
    """TorchServe's own metrics cache, configured from the metrics.yaml it ships."""
    metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
    metrics.initialize_cache()
    metrics.model_name = "test"  # as the worker sets it after loading a model
    return metrics


class RecordedMetrics(Metrics):
    """The request core's metrics, kept as (name, value, labels) for a test to read."""

    def __init__(self, model_name: str = "test"):
        super().__init__(model_name)
        self.events = []

    def emit(self, name: str, value: float, *labels: str) -> None:
        self.events.append((name, value, labels))

    def total(self, name: str, *labels: str) -> float:
        return sum(v for n, v, ls in self.events if n == name and ls[: len(labels)] == labels)

    def last(self, name: str):
        return next((v for n, v, _ in reversed(self.events) if n == name), None)
