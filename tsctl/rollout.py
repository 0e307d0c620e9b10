"""Gated version rollout: register beside the default, compare on a golden set, promote, watch,
roll back by itself, and retire the old version after a grace period."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tsctl.cli import ApiError, Client

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Gate:
    min_agreement: float = 0.95  # share of golden images whose top-1 the new version keeps
    max_errors: int = 0  # failed golden requests tolerated on the new version
    max_p99_ratio: float = 3.0  # new p99 <= ratio x old p99 + slack
    p99_slack_ms: float = 200.0  # absolute allowance for noisy shared hosts


@dataclass
class GoldenRun:
    version: str
    top1: dict = field(default_factory=dict)  # file -> label
    errors: list = field(default_factory=list)
    latencies_ms: list = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        lat = sorted(self.latencies_ms)
        return lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))] if lat else float("inf")


def golden_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images in the golden set folder {folder}")
    return files


def run_golden(client: Client, model: str, version: str, files: list[Path], repeats: int = 2) -> GoldenRun:
    """Each golden image through one version: a first pass for top-1 and errors (it also warms a
    freshly started worker), then `repeats` timed passes for latency."""
    run = GoldenRun(version)
    for timed in [False] + [True] * repeats:
        for path in files:
            start = time.perf_counter()
            try:
                answer = client.predict(model, path.read_bytes(), version).json()
                run.top1.setdefault(path.name, answer[0]["label"])
            except (ApiError, ValueError, KeyError, IndexError) as exc:
                run.errors.append(f"{path.name}: {exc}")
            if timed:
                run.latencies_ms.append((time.perf_counter() - start) * 1000)
    return run


def gate_failures(old: GoldenRun, new: GoldenRun, gate: Gate) -> list[str]:
    """Why the new version must not be promoted; empty when the gate passes."""
    reasons = []
    shared = [f for f in old.top1 if f in new.top1]
    agree = sum(old.top1[f] == new.top1[f] for f in shared) / max(1, len(old.top1))
    if agree < gate.min_agreement:
        changed = [f"{f}: {old.top1[f]} -> {new.top1[f]}" for f in shared if old.top1[f] != new.top1[f]][:5]
        reasons.append(f"top-1 agreement {agree:.0%} < {gate.min_agreement:.0%} ({'; '.join(changed)})")
    if len(new.errors) > gate.max_errors:
        reasons.append(f"{len(new.errors)} failed golden requests > {gate.max_errors} ({new.errors[:3]})")
    limit = old.p99_ms * gate.max_p99_ratio + gate.p99_slack_ms
    if new.p99_ms > limit:
        reasons.append(f"p99 {new.p99_ms:.0f} ms > {limit:.0f} ms ({gate.max_p99_ratio}x old {old.p99_ms:.0f} ms + {gate.p99_slack_ms:.0f})")
    return reasons


def mar_version(mar: Path) -> tuple[str, str]:
    """(model name, version) from an archive's MANIFEST.json."""
    with zipfile.ZipFile(mar) as z:
        model = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
    return model["modelName"], model["modelVersion"]


def stage_archive(mar: Path, model: str, model_store: Path) -> tuple[str, str]:
    """Copy the archive into the model store under a per-version name; returns (file name, version)."""
    _, version = mar_version(mar)
    name = f"{model}-v{version}.mar"
    target = Path(model_store) / name
    if Path(mar).resolve() != target.resolve():
        shutil.copyfile(mar, target)
    return name, version


def watch(client: Client, model: str, files: list[Path], seconds: float, max_error_rate: float, min_requests: int = 8):
    """Probe the unversioned endpoint for `seconds`; returns None, or why it must roll back."""
    sent = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = files[sent % len(files)]
        try:
            client.predict(model, path.read_bytes())
        except ApiError:
            failed += 1
        sent += 1
        if sent >= min_requests and failed / sent > max_error_rate:
            return f"error rate {failed}/{sent} = {failed / sent:.0%} > {max_error_rate:.0%} after promotion"
        time.sleep(0.1)
    return None


class State:
    """What rollback needs: the previous default and the archive it came from."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, **values) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({**self.load(), **values}, indent=2))


def rollout(client: Client, model: str, mar: Path, golden: Path, model_store: Path, gate: Gate,
            watch_s: float, max_error_rate: float, grace_s: float, workers: int, state: State, log=print) -> int:
    files = golden_files(golden)
    old = client.default_version(model)
    url, new = stage_archive(mar, model, model_store)
    if new in client.versions(model):
        log(f"refused: {model} version {new} is already registered")
        return 1
    log(f"registering {model} v{new} beside default v{old} ({workers} worker(s)) ...")
    client.register(url, workers=workers, model_name=model)
    log(f"golden set: {len(files)} images from {golden}")
    old_run, new_run = run_golden(client, model, old, files), run_golden(client, model, new, files)
    agree = sum(old_run.top1.get(f) == l for f, l in new_run.top1.items())
    log(f"  v{old}: p99 {old_run.p99_ms:.0f} ms, {len(old_run.errors)} errors")
    log(f"  v{new}: p99 {new_run.p99_ms:.0f} ms, {len(new_run.errors)} errors, top-1 agrees on {agree}/{len(old_run.top1)}")
    reasons = gate_failures(old_run, new_run, gate)
    if reasons:
        client.unregister(model, new)
        log(f"refused: v{new} not promoted; default stays v{old}:\n  " + "\n  ".join(reasons))
        return 1
    old_url = client.management("GET", f"/models/{model}/{old}").json()[0]["modelUrl"]
    client.set_default(model, new)
    state.save(model=model, previous=old, previous_url=old_url, current=new, gate=asdict(gate),
               promoted_at=time.time())
    log(f"promoted v{new}; watching the error rate for {watch_s:.0f} s ...")
    why = watch(client, model, files, watch_s, max_error_rate)
    if why:
        client.set_default(model, old)
        client.unregister(model, new)
        state.save(previous=None, current=old, rolled_back_from=new)
        log(f"rolled back to v{old}: {why}")
        return 1
    log(f"v{new} healthy; retiring v{old} after a {grace_s:.0f} s grace period ...")
    time.sleep(grace_s)
    client.unregister(model, old)
    log(f"done: {model} default is v{new}")
    return 0


def rollback(client: Client, model: str, state: State, workers: int, log=print) -> int:
    """Make the previous default the default again (re-registering it if it was retired)."""
    saved = state.load()
    previous, current = saved.get("previous"), client.default_version(model)
    if not previous:
        log(f"nothing to roll back to for {model} (no previous default recorded in {state.path})")
        return 1
    if previous not in client.versions(model):
        url = saved.get("previous_url") or f"{model}-v{previous}.mar"
        log(f"v{previous} was retired; registering it again from {url} ...")
        client.register(url, workers=workers, model_name=model)
    client.set_default(model, previous)
    state.save(previous=current, current=previous)
    log(f"{model} default is v{previous} again (was v{current})")
    return 0
