"""`tsctl experiment start|status|stop`: a candidate archive beside the model's default version, as
one experiment archive (modeltools/experiment_archive.py) registered as a version of the same
model and made its default, so TorchServe's set-default starts and stops it at once. Stopping
sets the primary back as the default and unregisters the experiment's version. Every step
restores the state before it if it fails, as rollouts do (tsctl/rollout.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from modeltools.experiment_archive import combine, experiment_version
from tsctl.client import ApiError, Client
from tsctl.steps import FAULTS, drain, mar_version, retrying, stage_archive


def health(client: Client, model: str, version: str | None = None) -> dict:
    path = f"/models/{model}" + (f"/{version}" if version else "")
    desc = client.management("GET", path, params={"customized": "true"}).json()[0]
    raw = desc.get("customizedMetadata") or "{}"
    return json.loads(raw) if isinstance(raw, str) else raw


def start(
    client: Client,
    model: str,
    candidate: Path,
    model_store: Path,
    mode: str = "shadow",
    sample: float = 0.1,
    share: float = 0.5,
    key_header: str = "x-user-id",
    recover_s: float = 60,
    log=print,
) -> str:
    """Register the experiment of `candidate` beside the default and make it the default; its version."""
    primary = client.default_version(model)
    desc = client.management("GET", f"/models/{model}/{primary}").json()[0]
    version = experiment_version(primary, mode, mar_version(candidate)[1])
    if version in client.versions(model):
        raise ValueError(f"{model} version {version} is already registered (tsctl experiment stop {model} first)")
    with tempfile.TemporaryDirectory() as tmp:
        combined = Path(tmp) / f"{model}.mar"
        combine(Path(model_store) / Path(desc["modelUrl"]).name, candidate, combined, mode, sample, share, key_header)
        url, copied = stage_archive(combined, model, version, model_store)
    workers = max(1, len(desc.get("workers", [])))
    log(f"registering the experiment {model} v{version} ({mode} of {candidate.name} beside v{primary}) ...")
    try:
        client.register(url, workers=workers, model_name=model)
        client.set_default(model, version)
    except FAULTS:
        _undo(client, model, primary, version, recover_s, log)
        if copied:
            (Path(model_store) / url).unlink(missing_ok=True)
        raise
    log(f"{model}: the experiment v{version} answers unversioned requests")
    return version


def stop(client: Client, model: str, model_store: Path | None = None, recover_s: float = 60, log=print) -> str | None:
    """Set the experiment's primary back as the default, unregister the experiment's version and
    delete its archive from `model_store` (it holds nothing the primary or the candidate's own
    archive does not; `tsctl experiment start` builds it again)."""
    current = client.default_version(model)
    experiment = health(client, model).get("experiment")
    if not experiment:
        log(f"{model} v{current} runs no experiment")
        return None
    primary = experiment["primary_version"]
    _undo(client, model, primary, current, recover_s, log)
    removed = ""
    if model_store is not None:
        archive = Path(model_store) / f"{model}-v{current}.mar"
        if archive.exists():
            archive.unlink()
            removed = f" and its archive {archive.name} deleted"
    log(f"{model}: v{primary} is the default again; the experiment v{current} is unregistered{removed}")
    return primary


def _undo(client: Client, model: str, primary: str, version: str, recover_s: float, log) -> None:
    retrying(lambda: client.set_default(model, primary), recover_s, f"set v{primary} as the default", log)
    drain(client, model, version)

    def unregister():
        try:
            client.unregister(model, version)
        except ApiError as exc:
            if exc.status != 404:
                raise

    retrying(unregister, recover_s, f"unregister v{version}", log)


def status(client: Client, model: str) -> dict | None:
    return health(client, model).get("experiment")
