"""Which backend and precision serve, chosen at load by measurement.

By default (`precision: auto` or `float32`) the float32 answers serve: every float32 backend
available on this host (PyTorch; ONNX Runtime and OpenVINO on the ONNX file the archive
carries) is a candidate. A reduced precision (bfloat16, float16, or int8 on the archive's
quantized ONNX file) is a candidate only when the archive's settings ask for it and its
verification record (handlers/model/verification.py) shows that candidate keeping the
archive's `min_agreement` with the float32 answers; so is every candidate of an archive that
serves `pixels: fast`. Every candidate is verified against the archive's reference photos
(handlers/model/reference.py): the same top-1 on every photo, every probability within its
precision's tolerance. The verified ones are timed on the served batch shapes, in interleaved
rounds, and the fastest serves. The setting `backend` narrows the choice to what it names.

The decision is written to the model's cache directory with what every candidate measured, so
a worker started again (after a crash, a kill, a scale-up) builds only the chosen backend,
checks it against the reference again, and is ready in the time that takes; workers starting
together measure once, one after the other, under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .engine import REDUCED, Engine, EngineOptions
from .onnx_backends import INT8_FILE, OnnxRuntimeBackend, OpenVinoBackend, onnxruntime_providers, openvino_precisions
from .recipe import Recipe
from .reference import ReferenceSet
from .verification import FILE as VERIFICATION_FILE
from .verification import VerificationRecord

logger = logging.getLogger(__name__)
ROUNDS = 3  # timing rounds; each candidate's best round counts


@dataclass(frozen=True)
class Candidate:
    backend: str  # torch, onnxruntime, openvino
    precision: str  # float32, bfloat16, float16, int8

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


def available(
    device: torch.device,
    options: EngineOptions,
    has_onnx: bool,
    has_int8: bool = False,
    record: VerificationRecord | None = None,
    needs_evidence: bool = False,
) -> tuple[list[Candidate], dict]:
    """The backends and precisions this host can run for this archive, as the settings allow ->
    (candidates, {what is not a candidate: why}). `auto` is float32; a reduced precision, and
    every candidate when `needs_evidence` (fast pixels), only with the record's passing measure."""
    found, missing = hardware_candidates(device, has_onnx, has_int8)
    allowed = wanted(found, options)
    if needs_evidence or options.precision in REDUCED:
        for c in list(allowed):
            if record is None:
                missing[c.label] = "the archive carries no verification record (build_mar.py --verify-images DIR)"
            elif not record.passed(c.label):
                missing[c.label] = record.why_not(c.label)
            else:
                continue
            allowed.remove(c)
    return allowed, missing


def wanted(found: list[Candidate], options: EngineOptions) -> list[Candidate]:
    """The candidates the settings name: their backend (or any), at their precision (`auto`: float32)."""
    precision = "float32" if options.precision == "auto" else options.precision
    return [c for c in found if options.backend in ("auto", c.backend) and c.precision == precision]


def hardware_candidates(device: torch.device, has_onnx: bool, has_int8: bool) -> tuple[list[Candidate], dict]:
    """Every backend and precision this host can run for this archive, whatever the settings."""
    found, missing = [], {}
    if device.type == "cuda":
        found += [Candidate("torch", "float16"), Candidate("torch", "float32")]
        if torch.cuda.is_bf16_supported():
            found.append(Candidate("torch", "bfloat16"))
    else:
        found.append(Candidate("torch", "float32"))
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            found.append(Candidate("torch", "bfloat16"))
        else:
            missing["torch/bfloat16"] = "this CPU has no bfloat16 instructions"
    if not has_onnx:
        missing["onnxruntime, openvino"] = (
            "the archive carries no ONNX file (built with --no-onnx, or the export failed)"
        )
    else:
        if onnxruntime_providers(device) is not None:
            found.append(Candidate("onnxruntime", "float32"))
        else:
            missing["onnxruntime"] = f"onnxruntime is not installed, or has no execution provider for {device.type}"
        precisions = openvino_precisions(device)
        found += [Candidate("openvino", p) for p in precisions]
        if not precisions:
            missing["openvino"] = "openvino is not installed" if device.type == "cpu" else "runs on the CPU only here"
        if has_int8:  # the archive's quantized ONNX file (QDQ), run by both ONNX backends
            found += [Candidate(c.backend, "int8") for c in found if c.backend != "torch" and c.precision == "float32"]
        else:
            missing["int8"] = "the archive carries no int8 file (build_mar.py --set handler.precision=int8)"
    return found, missing


@dataclass
class Selection:
    """What serves and why, for health and the log."""

    chosen: str
    why: str
    measured: dict  # candidate label -> its verification and timing, or its error
    from_cache: bool = False
    unavailable: dict = field(default_factory=dict)  # backend -> why it is not a candidate here
    evidence: dict | None = None  # the chosen one's measure on the archive's verification set

    def to_dict(self) -> dict:
        return {
            "chosen": self.chosen,
            "why": self.why,
            "from_cache": self.from_cache,
            "candidates": self.measured,
            "unavailable": self.unavailable,
            "verification": self.evidence,
        }


def choose_engine(
    recipe: Recipe,
    device: torch.device,
    batch_size: int,
    options: EngineOptions,
    build_torch: Callable[[], torch.nn.Module],
    onnx_path: Path | None,
    reference: ReferenceSet | None,
    cache_dir: Path,
    threads: int | None = None,
    record: VerificationRecord | None = None,
    int8_path: Path | None = None,
    needs_evidence: bool = False,
) -> tuple[Engine, Selection]:
    """The engine that serves, warmed up, and the selection that chose it; on the CPU with
    `threads` threads (default: torch's, the worker's). `record`: the archive's verification
    record, the evidence a reduced precision (or, with `needs_evidence`, any candidate) needs."""
    candidates, unavailable = available(
        device, options, onnx_path is not None, int8_path is not None, record, needs_evidence
    )
    if not candidates:
        raise ValueError(
            f"no backend here matches backend={options.backend} precision={options.precision} on {device}: "
            f"{unavailable or 'that precision does not run here'}"
        )
    if reference is None:  # nothing to verify a reduced precision or another runtime against
        unavailable["all but torch/float32"] = "the archive carries no reference photos to verify them on"
        safe = [
            c for c in candidates if c.backend == "torch" and (c.precision == "float32" or options.precision != "auto")
        ]
        candidates = safe or candidates[:1]
    build = builder(recipe, device, batch_size, options, build_torch, onnx_path, cache_dir, threads, int8_path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = fingerprint(device, batch_size, options, threads)
    with _locked(cache_dir / "lock"):
        engine, selection = _from_cache(cache_dir, key, candidates, build, reference)
        if engine is None:
            engine, selection = _measure(candidates, build, reference, batch_size)
            _write(cache_dir, key, selection)
    selection.unavailable = unavailable
    selection.evidence = record.evidence(selection.chosen) if record is not None else None
    engine.warm_up()
    logger.info("engine: %s (%s)", selection.chosen, selection.why)
    if selection.evidence is not None:
        logger.info("  on the archive's verification set: %s", selection.evidence)
    for label, result in selection.measured.items():
        logger.info("  %s: %s", label, result)
    return engine, selection


def archive_evidence(folder: Path) -> dict:
    """What an unpacked archive's `folder` gives choose_engine beside its model: the verification
    record and the int8 file, where it carries them."""
    int8 = Path(folder) / INT8_FILE
    return {"record": VerificationRecord.load(Path(folder) / VERIFICATION_FILE),
            "int8_path": int8 if int8.exists() else None}  # fmt: skip


def builder(recipe, device, batch_size, options, build_torch, onnx_path, cache_dir, threads=None, int8_path=None):
    threads = (threads or torch.get_num_threads()) if device.type == "cpu" else 1
    streams = options.streams(device, threads)

    def build(candidate: Candidate) -> Engine:
        if candidate.backend == "torch":
            model = build_torch()
            return Engine(model, recipe, device, batch_size, replace(options, precision=candidate.precision), False)
        path = int8_path if candidate.precision == "int8" else onnx_path
        if candidate.backend == "onnxruntime":
            backend = OnnxRuntimeBackend(path, device, threads, streams, candidate.precision)
        else:
            backend = OpenVinoBackend(path, candidate.precision, threads, streams, cache_dir / "openvino")
        return Engine(backend, recipe, device, batch_size, options, warm_up=False)

    return build


def _from_cache(cache_dir, key, candidates, build, reference) -> tuple[Engine | None, Selection | None]:
    path = cache_dir / "decision.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    chosen = next((c for c in candidates if c.label == saved.get("chosen")), None)
    if saved.get("key") != key or chosen is None:
        return None, None
    try:
        engine = build(chosen)
        if (
            reference is not None
            and not reference.judge(engine.run(reference.pixels).logits, chosen.precision).verified
        ):
            logger.warning("engine: %s no longer verifies against the reference; measuring again", chosen.label)
            return None, None
    except Exception as exc:  # what built before no longer does: measure again
        logger.warning("engine: %s failed to build from the cache's decision (%s); measuring again", chosen.label, exc)
        return None, None
    return engine, Selection(chosen.label, saved["why"], saved["measured"], from_cache=True)


def _measure(candidates, build, reference, batch_size) -> tuple[Engine, Selection]:
    engines, measured = {}, {}
    for candidate in candidates:
        start = time.perf_counter()
        try:
            engine = build(candidate)
            entry = {"build_ms": round((time.perf_counter() - start) * 1000)}
            if reference is not None:
                entry.update(reference.judge(engine.run(reference.pixels).logits, candidate.precision).to_dict())
            if entry.get("verified", True):
                engines[candidate] = engine
            else:
                engine.close()
        except Exception as exc:  # a runtime that cannot run this model here is simply not a candidate
            logger.warning("engine: %s cannot serve here: %s", candidate.label, exc)
            entry = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        measured[candidate.label] = entry
    if not engines:
        raise RuntimeError(f"no backend passed verification against the reference photos: {measured}")
    if len(engines) == 1:  # nothing to choose between: no timing
        (chosen,) = engines
        why = "the only verified candidate" if len(candidates) > 1 else "the only candidate the settings allow"
        return engines[chosen], Selection(chosen.label, why, measured)
    timings = _time(engines, batch_size, reference, measured)
    if not timings:
        raise RuntimeError(f"every verified backend failed on the served batch shapes: {measured}")
    for candidate, ms in timings.items():
        measured[candidate.label]["ms_per_image"] = round(ms, 3)
    chosen = min(timings, key=timings.get)
    for candidate, engine in engines.items():
        if candidate != chosen:
            engine.close()
    ranked = sorted(timings.values())
    why = f"fastest of {len(timings)} verified" + (
        f": {ranked[1] / ranked[0]:.2f}x the next" if len(ranked) > 1 else ""
    )
    return engines[chosen], Selection(chosen.label, why, measured)


def _time(engines: dict, batch_size: int, reference: ReferenceSet | None, measured: dict) -> dict:
    """Milliseconds per image over the served batch shapes (1 image and a full batch), the best
    of ROUNDS interleaved rounds, so a slow spell on a shared host touches every candidate. A
    candidate that fails on these shapes is dropped, with its error in `measured`."""
    any_engine = next(iter(engines.values()))
    photos = reference.pixels if reference is not None else any_engine.zeros(1)
    sizes = sorted({1, batch_size})
    batches = {n: photos.repeat(-(-n // len(photos)), 1, 1, 1)[:n].to(any_engine.device) for n in sizes}
    timed = {}
    for candidate, engine in engines.items():  # first runs pick kernels: not timed
        try:
            for pixels in batches.values():
                engine.run(pixels)
            timed[candidate] = engine
        except Exception as exc:
            measured[candidate.label]["error"] = f"{type(exc).__name__}: {exc}"[:300]
    best = {candidate: float("inf") for candidate in timed}
    for _ in range(ROUNDS):
        for candidate, engine in timed.items():
            start = time.perf_counter()
            for pixels in batches.values():
                engine.run(pixels)
            best[candidate] = min(best[candidate], time.perf_counter() - start)
    return {c: 1000 * t / sum(sizes) for c, t in best.items()}


def fingerprint(device: torch.device, batch_size: int, options: EngineOptions, threads: int | None = None) -> str:
    """What a decision depends on besides the archive (the cache lives in the model's own unpacked directory)."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor()
    )
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return json.dumps(
        {
            "cpu": cpu,
            "gpu": gpu,
            "threads": torch.get_num_threads(),
            "batch_size": batch_size,
            "options": options.__dict__,
            "versions": installed(),
        },
        sort_keys=True,
    )


def installed() -> dict:
    versions = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return versions


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _write(cache_dir: Path, key: str, selection: Selection) -> None:
    doc = {"key": key, "chosen": selection.chosen, "why": selection.why, "measured": selection.measured}
    partial = cache_dir / "decision.json.partial"
    partial.write_text(json.dumps(doc, indent=2))
    os.replace(partial, cache_dir / "decision.json")


@contextmanager
def _locked(path: Path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
