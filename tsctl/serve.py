"""TorchServe on this host, for one checkout or work folder: start it serving what was served
when it last stopped, stop only the server it started, and say why when a start fails.

What is served is kept in `.tsctl/serving.json` of the work folder (every model version, which
is the default, its archive, workers and batch settings, as TorchServe's management API
describes them), written by `tsctl stop` and after every tsctl command that changes it
(register, scale, set-default, unregister, rollout, rollback). `tsctl serve` hands it to
TorchServe as `model_snapshot`, so a restart serves what was promoted. (TorchServe's own
snapshots are not used: it restores the last one only when started without `--ts-config`, and
then in place of that file's settings.)

TorchServe's pid file lives in the work folder's `.tsctl/tmp`, so `tsctl stop` stops this
folder's server and no other one on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import requests
import yaml

from tsctl.client import ApiError, Client
from tsctl.local_server import LOG_CONFIG
from tsctl.state_files import checked_name, read_json, write_json
from tsctl.steps import PROGRESS_EVERY_S

LAUNCH = "import sys; from ts.model_server import start; sys.exit(start())"
# what TorchServe's logs say when a worker dies or a model fails to load (it would retry forever)
FAILURE_MARKS = ("Backend worker process died", "Auto recovery failed", "Failed to load model", "Load model failed")


class StartFailed(RuntimeError):
    """TorchServe or a model's worker did not start; the message holds the logs' last lines."""


def state_path(workdir: Path) -> Path:
    return Path(workdir) / ".tsctl" / "serving.json"


def _tmp(workdir: Path) -> Path:
    return Path(workdir) / ".tsctl" / "tmp"


def describe_serving(client: Client) -> dict:
    """What TorchServe serves now: {model: {version: its model_snapshot entry}}."""
    served = {}
    for model in client.management("GET", "/models").json().get("models", []):
        name = model["modelName"]
        default = client.default_version(name)
        for desc in client.management("GET", f"/models/{name}/all").json():
            workers = len(desc.get("workers", [])) or desc.get("minWorkers", 1)
            served.setdefault(name, {})[desc["modelVersion"]] = {
                "defaultVersion": desc["modelVersion"] == default,
                "marName": Path(desc["modelUrl"]).name,
                "minWorkers": desc.get("minWorkers", workers),
                "maxWorkers": desc.get("maxWorkers", workers),
                "batchSize": desc.get("batchSize", 1),
                "maxBatchDelay": desc.get("maxBatchDelay", 100),
                "responseTimeout": desc.get("responseTimeout", 120),
            }
    return served


def remember(client: Client, workdir: Path) -> dict:
    """Write what is served to the work folder's state; returns it."""
    served = describe_serving(client)
    write_json(state_path(workdir), {"models": served, "saved_at": time.time()})
    return served


def archive_entry(mar: Path, workers: int) -> tuple[str, str, dict]:
    """(model, version, model_snapshot entry) for an archive, with its own batch settings."""
    with zipfile.ZipFile(mar) as z:
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
        names = set(z.namelist())
        config = yaml.safe_load(z.read("model-config.yaml")) if "model-config.yaml" in names else {}
    checked_name(manifest["modelName"], f"{mar.name}: model name")
    checked_name(manifest["modelVersion"], f"{mar.name}: version")
    entry = {"defaultVersion": True, "marName": mar.name, "minWorkers": workers, "maxWorkers": workers,
             "batchSize": config.get("batchSize", 1), "maxBatchDelay": config.get("maxBatchDelay", 100),
             "responseTimeout": config.get("responseTimeout", 120)}  # fmt: skip
    return manifest["modelName"], manifest["modelVersion"], entry


def plan(archives: list[Path], workers: int, workdir: Path, fresh: bool, log=print, prefer_given: bool = False) -> dict:
    """{model: {version: entry}} to start with: the state of the last stop, plus the given
    archives of models it does not hold. For a model it holds, what was last promoted stays the
    default, unless `prefer_given` (the user named the archive): then the given version is the
    default, registered beside the saved ones."""
    saved = {} if fresh else saved_models(workdir)
    models = {name: dict(versions) for name, versions in saved.items()}
    for mar in archives:
        name, version, entry = archive_entry(mar, workers)
        if name not in models:
            models[name] = {version: entry}
        elif prefer_given:
            models[name] = {v: {**e, "defaultVersion": False} for v, e in models[name].items() if v != version}
            models[name][version] = entry
        elif version not in models[name]:
            log(f"{name}: the saved state is served; {mar.name} (v{version}) is not registered (make serve "
                "MAR=... or CHECKPOINT=... serves a named one; FRESH=1 forgets the saved state)")  # fmt: skip
    for name, versions in models.items():
        if name in saved:
            default = next((v for v, e in versions.items() if e.get("defaultVersion")), None)
            log(f"restoring {name}: " + ", ".join(f"v{v}{' (default)' if v == default else ''} x{e['minWorkers']}"
                                                  for v, e in versions.items()))  # fmt: skip
    return models


def saved_models(workdir: Path) -> dict:
    """The models the last stop saved, {} when none; a damaged state file is named with what to do."""
    fix = "delete it, or start with make serve FRESH=1 (tsctl serve --fresh), which serves the given archive only"
    try:
        models = read_json(state_path(workdir), fix).get("models", {})
    except ValueError as exc:
        raise StartFailed(str(exc)) from None
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        raise StartFailed(f"{state_path(workdir)} is damaged (no models in it): {fix}")
    return models


def serve(
    config: Path,
    model_store: Path,
    archives: list[Path],
    workdir: Path,
    workers: int = 1,
    fresh: bool = False,
    env: dict | None = None,
    timeout_s: float = 300,
    log=print,
    prefer_given: bool = False,
) -> dict:
    """Start TorchServe in `workdir` with `config` and what `plan` gives; wait until every
    model has a READY worker. StartFailed, within seconds, when the server or a worker fails."""
    workdir, model_store = Path(workdir).resolve(), Path(model_store).resolve()
    if running_pid(workdir):
        raise StartFailed(f"TorchServe already runs from {workdir} (pid {running_pid(workdir)}): stop it first")
    for mar in archives:
        if Path(mar).resolve().parent != model_store:
            raise StartFailed(f"{mar} is not in the model store {model_store}: build it there (make mar) or copy it")
    models = plan([Path(m) for m in archives], workers, workdir, fresh, log, prefer_given)
    missing = [e["marName"] for v in models.values() for e in v.values() if not (model_store / e["marName"]).exists()]
    if missing:
        raise StartFailed(f"archives of the saved state are gone from {model_store}: {missing}. "
                          "make serve FRESH=1 (tsctl serve --fresh) forgets the saved state and serves the given "
                          "archive only")  # fmt: skip
    if fresh and state_path(workdir).exists():
        state_path(workdir).unlink()
    snapshot = {"name": "startup.cfg", "modelCount": len(models), "models": models}
    replaced = ("load_models=", "model_snapshot=", "model_store=", "allowed_urls=")
    text = "".join(line + "\n" for line in Path(config).read_text().splitlines() if not line.startswith(replaced))
    # archives from this model store only, by its absolute path (not any folder named model_store);
    # a regex, escaped once more for Java's properties format
    text += "allowed_urls=file://" + re.escape(str(model_store)).replace("\\", "\\\\") + "/[^/]*[.]mar\n"
    started_config = workdir / ".tsctl" / "config.properties"
    started_config.parent.mkdir(parents=True, exist_ok=True)
    started_config.write_text(text + f"model_store={model_store}\nmodel_snapshot={json.dumps(snapshot)}\n")
    _tmp(workdir).mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    for name in ("ts_log.log", "model_log.log"):  # this start's lines only, for the failure report
        (logs / name).unlink(missing_ok=True)
    run_env = {**os.environ, **(env or {}), "TMPDIR": str(_tmp(workdir))}
    logs.mkdir(exist_ok=True)
    with open(logs / "start.txt", "w") as out:  # a file, not a pipe: the server keeps its output open
        code = subprocess.run([sys.executable, "-c", LAUNCH, "--start", "--ncs", "--ts-config", str(started_config),
                               "--model-store", str(model_store), "--log-config", str(LOG_CONFIG)],
                              cwd=workdir, env=run_env, stdout=out, stderr=subprocess.STDOUT).returncode  # fmt: skip
    if code:
        raise StartFailed(f"torchserve --start failed:\n{(logs / 'start.txt').read_text()[-3000:]}")
    client = Client(_address(started_config, "inference"), _address(started_config, "management"),
                    workdir / "key_file.json")  # fmt: skip
    _wait(client, list(models), workdir, timeout_s, log)
    return models


def _address(config: Path, kind: str) -> str:
    default = {"inference": "http://127.0.0.1:8080", "management": "http://127.0.0.1:8081"}[kind]
    for line in Path(config).read_text().splitlines():
        if line.startswith(f"{kind}_address="):
            return line.split("=", 1)[1].strip()
    return default


def _wait(client: Client, models: list[str], workdir: Path, timeout_s: float, log=print) -> None:
    start = time.monotonic()
    deadline, pending, said = start + timeout_s, set(models), start
    log(f"waiting for {', '.join(sorted(models))} to load (up to {timeout_s:.0f} s) ...")
    while pending:
        if time.monotonic() - said >= PROGRESS_EVERY_S:
            said = time.monotonic()
            log(f"  {said - start:.0f} s: {len(models) - len(pending)}/{len(models)} models ready; loading "
                f"{', '.join(sorted(pending))} (logs/model_log.log shows its worker's steps)")  # fmt: skip
        if not running_pid(workdir):
            raise StartFailed(f"TorchServe exited while starting.\n{log_tail(workdir)}")
        failures = _failures(workdir)
        if failures >= 2:  # a worker that dies at start dies again: TorchServe would retry forever
            raise StartFailed(f"a model's worker failed to start ({failures} times).\n{log_tail(workdir)}")
        for model in list(pending):
            try:
                desc = client.management("GET", f"/models/{model}").json()[0]
                if any(w.get("status") == "READY" for w in desc.get("workers", [])):
                    pending.discard(model)
            except (requests.RequestException, ApiError, ValueError, KeyError, FileNotFoundError):
                pass
        if time.monotonic() > deadline:
            raise StartFailed(f"not ready after {timeout_s:.0f} s: {sorted(pending)}.\n{log_tail(workdir)}")
        time.sleep(0.5)


def _failures(workdir: Path) -> int:
    count = 0
    for name in ("ts_log.log", "model_log.log"):
        path = Path(workdir) / "logs" / name
        text = path.read_text(errors="replace") if path.exists() else ""
        count += sum(text.count(mark) for mark in FAILURE_MARKS)
    return count


def log_tail(workdir: Path, lines: int = 15) -> str:
    out = []
    for name in ("ts_log.log", "model_log.log"):
        path = Path(workdir) / "logs" / name
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- the last lines of {path}:\n" + "\n".join(tail))
    return "\n".join(out) + f"\nAll logs: {Path(workdir) / 'logs'}/"


def running_pid(workdir: Path) -> int | None:
    """The pid of the TorchServe this work folder started, if it still runs."""
    pid_file = _tmp(workdir) / ".model_server.pid"
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().split()[0])
        return pid if psutil.pid_exists(pid) and "org.pytorch.serve.ModelServer" in " ".join(
            psutil.Process(pid).cmdline()) else None  # fmt: skip
    except (ValueError, psutil.Error):
        return None


def stop(workdir: Path, log=print) -> bool:
    """Remember what is served, then stop this work folder's TorchServe; False if none runs."""
    workdir = Path(workdir).resolve()
    pid = running_pid(workdir)
    if pid is None:
        log(f"no TorchServe runs from {workdir}")
        return False
    config = workdir / ".tsctl" / "config.properties"
    try:
        client = Client(_address(config, "inference"), _address(config, "management"), workdir / "key_file.json")
        served = remember(client, workdir)
        log(f"saved what is served to {state_path(workdir)}: {sorted(served)}")
    except (requests.RequestException, ApiError, ValueError, KeyError, FileNotFoundError) as exc:
        log(f"could not read what is served ({exc}); {state_path(workdir)} keeps the last saved state")
    env = {**os.environ, "TMPDIR": str(_tmp(workdir))}
    subprocess.run([sys.executable, "-c", LAUNCH, "--stop"], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(60)
    return True
