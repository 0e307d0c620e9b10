"""The network alone in `make bench`, without TorchServe or decoding: the eager model as the stock
handler runs it, each runtime as a user would call it directly, the handler's engine on each
backend and precision, the engine as served (the backend chosen at load), and the engine with
one optimisation off; and the top-1 agreement of what is served with a float32 reference."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from handlers.model.checkpoint import load_classifier
from handlers.model.engine import Engine, EngineOptions
from handlers.model.recipe import normalize
from handlers.model.reference import FILE as REFERENCE_FILE
from handlers.model.reference import ReferenceSet
from handlers.model.selection import Candidate, available, builder, choose_engine
from handlers.request.decoding import decode_image
from handlers.request.pixels import image_pixels, reference_pixels

CPU = torch.device("cpu")
# The engine with one optimisation off, per backend: what each one buys (docs/PERFORMANCE.md).
TORCH_VARIANTS = {
    "eager graph": {"graph": "eager"},
    "no oneDNN fusion": {"onednn_fusion": False},
    "run-time padding": {"static_padding": False},
    "one multi-threaded pass": {"cpu_streams": False},
}


def served_engine(archive: Path, checkpoint: Path, batch: int, cache: Path, **options) -> tuple[Engine, dict]:
    """The engine the handler serves this unpacked archive with (backend chosen as at load)."""
    build_torch = lambda: load_classifier(checkpoint, CPU, True)[0]  # noqa: E731
    info_recipe = load_classifier(checkpoint, CPU)[1].recipe
    engine, selection = choose_engine(
        info_recipe, CPU, batch, EngineOptions(**options), build_torch, archive / "model.onnx",
        ReferenceSet.load(archive / REFERENCE_FILE), cache,
    )  # fmt: skip
    return engine, selection.to_dict()


def setups(checkpoint: Path, archive: Path, threads: int, batch: int, cache: Path) -> list[tuple]:
    """(name, run, input, images per run) for every way of running the network timed."""
    torch.set_num_threads(threads)
    out = []
    for channels_last in (False, True):
        model, info = load_classifier(checkpoint, CPU, channels_last)
        for n in (1, 2, 4, 8, 16):
            with torch.inference_mode():
                x = torch.randn(n, 3, *info.recipe.crop_hw)
                x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            out.append((f"eager {'channels_last' if channels_last else 'contiguous'} batch {n}", model, x, n))
    pixels = torch.randint(0, 256, (batch, 3, *info.recipe.crop_hw), dtype=torch.uint8)
    out += runtimes_alone(archive / "model.onnx", pixels, threads)
    options = EngineOptions()
    candidates, _ = available(CPU, options, (archive / "model.onnx").exists())
    build_torch = lambda: load_classifier(checkpoint, CPU, True)[0]  # noqa: E731
    for candidate in candidates:
        for name, change in {"": {}, **_variants(candidate)}.items():
            build = builder(info.recipe, CPU, batch, replace(options, **change), build_torch,
                             archive / "model.onnx", cache / "variants")  # fmt: skip
            engine = build(candidate)
            engine.warm_up()
            out.append((f"engine {candidate.label}{', ' + name if name else ''}", engine.run, pixels, batch))
    engine, selection = served_engine(archive, checkpoint, batch, cache / "served")
    out.append((f"engine as served ({selection['chosen']})", engine.run, pixels, batch))
    return out


def _variants(candidate: Candidate) -> dict:
    if candidate.backend == "torch":
        return TORCH_VARIANTS if candidate.precision == "float32" else {}
    return {"one multi-threaded pass": {"cpu_streams": False}}


def runtimes_alone(onnx: Path, pixels: torch.Tensor, threads: int) -> list[tuple]:
    """ONNX Runtime and OpenVINO called directly on the archive's ONNX file, as their documentation
    shows: one session or compiled model, every thread, a whole batch per call (OpenVINO also
    with its THROUGHPUT hint, the batch split over as many requests as streams)."""
    out = []
    if not onnx.exists():
        return out
    x, n = pixels.numpy(), len(pixels)
    try:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        out.append(("onnxruntime alone float32", lambda x: session.run(None, {"pixels": x}), x, n))
    except ImportError:
        pass
    try:
        from handlers.model.onnx_backends import import_openvino

        openvino = import_openvino()
    except ImportError:
        return out
    core = openvino.Core()
    capabilities = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    for precision, hint in (("f32", "FP32"), ("bf16", "BF16")):
        if hint not in capabilities:
            continue
        latency = core.compile_model(str(onnx), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT":
                                                        precision, "INFERENCE_NUM_THREADS": threads})  # fmt: skip
        request = latency.create_infer_request()
        out.append((f"openvino alone {precision} LATENCY", lambda x, r=request: r.infer({0: x}), x, n))
        throughput = core.compile_model(str(onnx), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT",
                                                           "INFERENCE_PRECISION_HINT": precision,
                                                           "INFERENCE_NUM_THREADS": threads})  # fmt: skip
        queue = openvino.AsyncInferQueue(throughput, throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

        def split_run(x, q=queue):
            for part in np.array_split(x, len(q)):
                q.start_async({0: part})
            q.wait_all()

        out.append((f"openvino alone {precision} THROUGHPUT", split_run, x, n))
    return out


def model_alone(setups: list[tuple], seconds: float) -> dict[str, float]:
    """img/s of each setup, timed for `seconds` after 3 untimed runs."""
    results = {}
    with torch.inference_mode():
        for name, run, x, batch in setups:
            for _ in range(3):
                run(x)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                run(x)
                n += batch
            results[name] = n / (time.perf_counter() - start)
    return results


def accuracy(checkpoint: Path, archive: Path, photos: Path, image_sets: dict, cache: Path) -> list[dict]:
    """Top-1 of the float32 reference pipeline (full decode, Pillow resize, eager model) vs what
    the handler serves on CPU (handlers.request.pixels.image_pixels, then the served engine)."""
    model, info = load_classifier(checkpoint, CPU)
    engine, _ = served_engine(archive, checkpoint, 1, cache)
    labels = json.loads((photos / "labels.json").read_text()) if (photos / "labels.json").exists() else {}
    rows = []

    def reference(data: bytes):
        x = normalize(reference_pixels(decode_image(data, 10**9), info.recipe)[None], info.recipe)
        with torch.inference_mode():
            p = model(x).softmax(1)[0]
        return int(p.argmax()), float(p.max())

    def served(data: bytes):
        p = engine.run(image_pixels(data, 10**9, info.recipe)[None]).logits.softmax(1)[0]
        return int(p.argmax()), float(p.max())

    for size_name, paths in [("original", sorted(photos.glob("*.jpg")))] + list(image_sets.items()):
        for path in paths:
            data = path.read_bytes()
            (ref_i, ref_p), (served_i, served_p) = reference(data), served(data)
            rows.append({"size": size_name, "photo": path.name, "reference": info.labels[ref_i],
                         "served": info.labels[served_i], "same_top1": ref_i == served_i,
                         "acceptable": labels.get(path.name), "prob_shift": served_p - ref_p})  # fmt: skip
    return rows


def monitoring_cost(checkpoint: Path, archive: Path, batch: int, rounds: int = 200) -> dict:
    """Milliseconds the handler's monitoring adds to a batch beside the engine's time for it: on
    the request path (the window's statistics), and its reporting thread's work (the histogram's
    lines, the drift scores and their gauges through TorchServe's metrics cache) spread over the
    batches a second holds when the engine runs flat out."""
    import logging

    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    from handlers.metrics import HandlerMetrics
    from handlers.monitoring import REPORT_EVERY_S, Monitor, Profile, Reporter
    from handlers.request.answers import probabilities

    info = load_classifier(checkpoint, CPU)[1]
    recipe = info.recipe
    monitor = Monitor(Profile.of(ReferenceSet.load(archive / REFERENCE_FILE), recipe.mean, recipe.std), recipe.mean,
                      recipe.std)  # fmt: skip
    cache = MetricsCacheYamlImpl(config_file_path=str(Path(__file__).resolve().parents[1] / "metrics.yaml"))
    cache.initialize_cache()
    cache.model_name = "bench"
    metric_log = logging.getLogger("ts.metrics.caching_metric")
    metric_log.setLevel(logging.INFO)  # as in a worker: every line written
    metric_log.addHandler(logging.NullHandler())
    metric_log.propagate = False
    reporter = Reporter(monitor, lambda: HandlerMetrics(cache, "bench"))
    engine, _ = served_engine(archive, checkpoint, batch, archive.parent / "engine-cache-monitoring")
    pixels = torch.randint(0, 256, (batch, 3, *recipe.crop_hw), dtype=torch.uint8)
    probs = probabilities(engine.run(pixels).logits)  # the answers' probabilities, computed for them anyway

    def observe():  # what preprocess and postprocess add to a batch
        monitor.add_inputs(pixels)
        monitor.add_answers(probs)

    for _ in range(10):
        observe()
        engine.run(pixels)
    start = time.perf_counter()
    for _ in range(rounds):
        observe()
    path_ms = (time.perf_counter() - start) * 1000 / rounds
    start = time.perf_counter()
    for _ in range(20):
        engine.run(pixels)
    engine_ms = (time.perf_counter() - start) * 1000 / 20
    per_second = max(1, round(REPORT_EVERY_S * 1000 / engine_ms))  # batches between two reports
    report_ms, reports = 0.0, 20
    for _ in range(reports):
        for _ in range(per_second):
            monitor.add_answers(probs)
        start = time.perf_counter()
        reporter.report()
        report_ms += (time.perf_counter() - start) * 1000 / reports
    added = path_ms + report_ms / per_second
    return {"batch": batch, "path_ms": round(path_ms, 3), "report_ms": round(report_ms, 3),
            "batches_per_report": per_second, "monitoring_ms": round(added, 3), "engine_ms": round(engine_ms, 2),
            "share_of_engine": round(added / engine_ms, 4)}  # fmt: skip
