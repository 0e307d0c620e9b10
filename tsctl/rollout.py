"""Gated version rollout: register beside the default, compare on a golden set, promote, watch,
roll back by itself, and retire the old version after a grace period.

Each step leaves the model in a known state whatever fails (an API error, a connection error, a
timeout, a worker that dies): before promotion the new version is unregistered again and the old
default was never touched; after promotion the old default is set back and the new version
unregistered. While TorchServe does not answer, the restore is retried for `recover_s` seconds,
and what is left to do is printed if it still does not. An archive already in the model store is
never overwritten.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from tsctl.client import ApiError, Client
from tsctl.experiment import start as start_experiment
from tsctl.experiment import status as experiment_status
from tsctl.experiment import stop as stop_experiment
from tsctl.state_files import read_json, write_json
from tsctl.steps import FAULTS, PROGRESS_EVERY_S, Outcomes, drain, live_requests, mar_version, retrying, stage_archive

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Gate:
    min_agreement: float = 0.95  # share of golden images whose top-1 the new version keeps
    max_errors: int = 0  # failed golden requests tolerated on the new version
    max_p99_ratio: float = 3.0  # new p99 <= ratio x old p99 + slack
    p99_slack_ms: float = 200.0  # absolute allowance for noisy shared hosts


@dataclass(frozen=True)
class Plan:
    """What one rollout does, and how patiently."""

    model: str
    mar: Path
    golden: Path
    model_store: Path
    gate: Gate = Gate()
    workers: int = 1  # workers of the new version
    watch_s: float = 60.0  # seconds of error-rate watch after promotion
    max_error_rate: float = 0.05  # during the watch, above this rolls back
    grace_s: float = 30.0  # seconds before the old version is unregistered
    recover_s: float = 60.0  # how long a restore keeps trying a server that does not answer
    shadow_pairs: int = 0  # > 0: a shadow phase on live traffic before promotion, until this many paired answers
    shadow_sample: float = 1.0  # share of live batches the candidate shadows in that phase
    min_shadow_agreement: float = 0.95  # the Wilson lower bound of live top-1 agreement must reach this
    shadow_timeout_s: float = 600.0  # no verdict by then (too little traffic): not promoted
    metrics_url: str | None = None  # TorchServe's metrics address: the watch reads live error counts there


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
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"the golden set {folder} is not a folder: name a folder of images your model should "
            "classify (a sample of real traffic), e.g. --golden samples/"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images in the golden set folder {folder}")
    return files


def run_golden(client: Client, model: str, version: str, files: list[Path], repeats: int = 2) -> GoldenRun:
    """Each golden image through one version: a first pass for top-1 and errors (it also warms a
    freshly started worker), then `repeats` timed passes for latency. A request that fails is an
    error of the version; a server that stops answering ends the run (raised)."""
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
        reasons.append(
            f"p99 {new.p99_ms:.0f} ms > {limit:.0f} ms "
            f"({gate.max_p99_ratio}x old {old.p99_ms:.0f} ms + {gate.p99_slack_ms:.0f})"
        )
    return reasons


def watch(client: Client, model: str, files: list[Path], seconds: float, max_error_rate: float, min_requests: int = 8,
          metrics_url: str | None = None, log=print):  # fmt: skip
    """Probe the unversioned endpoint for `seconds`, and with `metrics_url` count what every
    client got meanwhile; returns None, or why it must roll back. Only the server's failures count:
    a probe answered 5xx or not at all, the handler's 500s, the frontend's own 5xx (no worker, a
    full queue, a timeout). Client errors (4xx: bad uploads) are reported, never a reason to roll
    back. The rate is judged early once `min_requests` were seen, and at the end on all of them."""
    sent = failed = 0
    base = live_requests(metrics_url, model) if metrics_url else Outcomes()
    live = Outcomes()
    start = time.monotonic()
    deadline, said = start + seconds, start
    while time.monotonic() < deadline:
        if time.monotonic() - said >= PROGRESS_EVERY_S:
            said = time.monotonic()
            log(f"  watching: {said - start:.0f}/{seconds:.0f} s, {max(sent, live.answered):.0f} requests, "
                f"{max(failed, live.failed):.0f} server errors, {live.client_errors:.0f} client errors")  # fmt: skip
        path = files[sent % len(files)]
        try:
            client.predict(model, path.read_bytes(), timeout=30)
        except ApiError as exc:
            failed += exc.status >= 500
        except requests.RequestException:
            failed += 1
        sent += 1
        if metrics_url:
            with contextlib.suppress(requests.RequestException, ValueError):
                live = live_requests(metrics_url, model).since(base)
        seen, bad = max(sent, live.answered), max(failed, live.failed)
        if seen >= min_requests and bad / seen > max_error_rate:
            break
        time.sleep(0.1)
    seen, bad = max(sent, live.answered), max(failed, live.failed)
    if live.client_errors:
        log(f"  {live.client_errors:.0f} of {seen:.0f} requests were client errors (4xx): not the new version's fault")
    if seen and bad / seen > max_error_rate:
        return f"server error rate {bad:.0f}/{seen:.0f} = {bad / seen:.0%} > {max_error_rate:.0%} after promotion"
    return None


class State:
    """What rollback needs, per model: the previous default and the archive it came from."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict:
        return read_json(self.path, "delete it; tsctl rollback then has no previous version to return to")

    def save(self, **values) -> None:
        write_json(self.path, {**self.load(), **values})


class Restore:
    """Puts the model back as it was before the rollout, whatever step failed."""

    def __init__(self, client: Client, plan: Plan, old: str, new: str, staged: Path | None, log=print):
        self.client, self.plan, self.old, self.new, self.staged, self.log = client, plan, old, new, staged, log
        self.experiment = None  # the version of a shadow phase's experiment while it runs

    def before_promotion(self) -> bool:
        """The new version unregistered (and a shadow phase's experiment: the old default set
        back, its version unregistered); the old default was never changed otherwise."""
        steps = [(f"unregister v{self.new}", self._unregister_new)]
        if self.experiment:
            set_old = (f"set v{self.old} as the default", lambda: self.client.set_default(self.plan.model, self.old))
            steps = [set_old, (f"unregister v{self.experiment}", lambda: self._unregister(self.experiment)), *steps]
        return self._steps(steps)

    def after_promotion(self) -> bool:
        """The old default set back, then the new version unregistered."""
        set_old = (f"set v{self.old} as the default", lambda: self.client.set_default(self.plan.model, self.old))
        return self._steps([set_old, (f"unregister v{self.new}", self._unregister_new)])

    def _unregister_new(self):
        self._unregister(self.new)

    def _unregister(self, version: str):
        drain(self.client, self.plan.model, version)
        try:
            self.client.unregister(self.plan.model, version)
        except ApiError as exc:
            if exc.status != 404:  # 404: it was never registered, which is the state wanted
                raise

    def _steps(self, steps) -> bool:
        for what, action in steps:
            try:
                retrying(action, self.plan.recover_s, what, self.log)
            except FAULTS as exc:
                todo = ", then ".join(w for w, _ in steps[steps.index((what, action)) :])
                self.log(
                    f"could not {what}: {exc}\n  {self.plan.model} is not in a known state: when TorchServe "
                    f"answers again, {todo} (tsctl set-default / tsctl unregister)."
                )
                return False
        if self.staged is not None:
            self.staged.unlink(missing_ok=True)  # copied by this rollout, registered by nothing now
        return True


def rollout(client: Client, plan: Plan, state: State, log=print) -> int:
    files = golden_files(plan.golden)
    model = plan.model
    _, new = mar_version(plan.mar)
    old = client.default_version(model)
    if new in client.versions(model):
        default = " and is the default" if new == old else " (a rollback leaves it registered, not the default)"
        log(f"refused: {model} version {new} is already registered{default}. To serve it again: tsctl set-default "
            f"{model} {new}; to roll it out anew: tsctl unregister {model} {new}, then the rollout again")  # fmt: skip
        return 1
    url, copied = stage_archive(plan.mar, model, new, plan.model_store)
    restore = Restore(client, plan, old, new, Path(plan.model_store) / url if copied else None, log)
    promoted = False
    try:
        log(f"registering {model} v{new} beside default v{old} ({plan.workers} worker(s)) ...")
        client.register(url, workers=plan.workers, model_name=model)
        log(f"golden set: {len(files)} images from {plan.golden}")
        old_run, new_run = run_golden(client, model, old, files), run_golden(client, model, new, files)
        agree = sum(old_run.top1.get(f) == label for f, label in new_run.top1.items())
        log(f"  v{old}: p99 {old_run.p99_ms:.0f} ms, {len(old_run.errors)} errors")
        log(
            f"  v{new}: p99 {new_run.p99_ms:.0f} ms, {len(new_run.errors)} errors, "
            f"top-1 agrees on {agree}/{len(old_run.top1)}"
        )
        reasons = gate_failures(old_run, new_run, plan.gate)
        if not reasons and plan.shadow_pairs:
            restore.experiment = start_experiment(
                client,
                model,
                Path(plan.model_store) / url,
                plan.model_store,
                "shadow",
                plan.shadow_sample,
                recover_s=plan.recover_s,
                log=log,
            )
            reasons = shadow_failures(client, model, plan, log)
            stop_experiment(client, model, plan.model_store, plan.recover_s, log)
            restore.experiment = None
        if reasons:
            restore.before_promotion()
            log(f"refused: v{new} not promoted; default stays v{old}:\n  " + "\n  ".join(reasons))
            return 1
        old_url = client.management("GET", f"/models/{model}/{old}").json()[0]["modelUrl"]
        promoted = True
        client.set_default(model, new)
        state.save(
            model=model,
            previous=old,
            previous_url=old_url,
            current=new,
            gate=asdict(plan.gate),
            promoted_at=time.time(),
            rolled_back_from=None,
        )
        log(f"promoted v{new}; watching the error rate for {plan.watch_s:.0f} s ...")
        why = watch(client, model, files, plan.watch_s, plan.max_error_rate, metrics_url=plan.metrics_url, log=log)
    except (*FAULTS, KeyboardInterrupt) as exc:
        log(f"rollout of v{new} interrupted: {exc or 'Ctrl-C'}; restoring the state before it ...")
        if promoted and restore.after_promotion():
            state.save(previous=None, previous_url=None, current=old, rolled_back_from=new)
            log(f"restored: {model} default is v{old}, v{new} unregistered")
        elif not promoted and restore.before_promotion():
            log(f"restored: {model} default stays v{old}, v{new} unregistered")
        return 1
    if why:
        if restore.after_promotion():
            state.save(previous=None, previous_url=None, current=old, rolled_back_from=new)
        log(f"rolled back to v{old}: {why}")
        return 1
    log(f"v{new} healthy; retiring v{old} after a {plan.grace_s:.0f} s grace period ...")
    time.sleep(plan.grace_s)
    try:
        drain(client, model, old)
        retrying(lambda: client.unregister(model, old), plan.recover_s, f"unregister v{old}", log)
    except FAULTS as exc:
        log(f"v{new} is the default, but v{old} could not be retired ({exc}): tsctl unregister {model} {old}")
        return 0
    log(f"done: {model} default is v{new}")
    return 0


def shadow_failures(client: Client, model: str, plan: Plan, log=print) -> list[str]:
    """Wait for `plan.shadow_pairs` paired answers of live traffic; why the candidate must not be
    promoted (empty when the live agreement's lower bound and its latency pass)."""
    log(f"shadowing live traffic until {plan.shadow_pairs} paired answers (at most {plan.shadow_timeout_s:.0f} s) ...")
    start = time.monotonic()
    deadline, seen, said = start + plan.shadow_timeout_s, {}, start
    while time.monotonic() < deadline:
        seen = experiment_status(client, model) or {}
        if seen.get("pairs", 0) >= plan.shadow_pairs:
            break
        if time.monotonic() - said >= PROGRESS_EVERY_S:
            said = time.monotonic()
            log(f"  {said - start:.0f} s: {seen.get('pairs', 0)}/{plan.shadow_pairs} paired answers, "
                f"{deadline - said:.0f} s left")  # fmt: skip
        time.sleep(1)
    else:
        return [f"only {seen.get('pairs', 0)} paired answers in {plan.shadow_timeout_s:.0f} s of live traffic "
                f"(--shadow-pairs {plan.shadow_pairs})"]  # fmt: skip
    lower, seconds = seen["top1_agreement_lower_95"], seen["seconds_per_batch"]
    log(f"  live top-1 agreement {seen['top1_agreement']:.1%} over {seen['pairs']} answers (lower 95% bound "
        f"{lower:.1%}), top-5 overlap {seen['top5_overlap']:.2f}, seconds per batch {seconds}")  # fmt: skip
    reasons = []
    if lower < plan.min_shadow_agreement:
        reasons.append(f"live top-1 agreement's lower bound {lower:.1%} < {plan.min_shadow_agreement:.0%} "
                       f"over {seen['pairs']} answers")  # fmt: skip
    limit = seconds["primary"] * plan.gate.max_p99_ratio + plan.gate.p99_slack_ms / 1000
    if seconds["candidate"] is not None and seconds["candidate"] > limit:
        reasons.append(f"the candidate takes {seconds['candidate'] * 1000:.0f} ms a batch > {limit * 1000:.0f} ms")
    return reasons


def rollback(client: Client, model: str, state: State, workers: int, log=print) -> int:
    """Make the previous default the default again (re-registering it if it was retired). Run
    again, it changes nothing: the version rolled back from is not a version to return to."""
    saved = state.load()
    previous, current = saved.get("previous"), client.default_version(model)
    if not previous:
        if saved.get("rolled_back_from") and saved.get("current") == current:
            log(f"{model} is already back on v{current} (rolled back from v{saved['rolled_back_from']}); nothing to do")
            return 0
        log(f"nothing to roll back to for {model} (no previous default recorded in {state.path})")
        return 1
    if previous not in client.versions(model):
        url = saved.get("previous_url") or f"{model}-v{previous}.mar"
        log(f"v{previous} was retired; registering it again from {url} ...")
        client.register(url, workers=workers, model_name=model)
    client.set_default(model, previous)
    state.save(previous=None, previous_url=None, current=previous, rolled_back_from=current)
    log(f"{model} default is v{previous} again (was v{current})")
    return 0
