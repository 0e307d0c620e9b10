"""What tsctl's multi-step commands (rollout, experiments) share: staging an archive in the model
store without ever overwriting one, and retrying a step while TorchServe does not answer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import requests

from tsctl.client import ApiError

# What may go wrong while talking to TorchServe: answers we did not want, no answer at all.
FAULTS = (ApiError, requests.RequestException, TimeoutError, ValueError, KeyError, IndexError)


def mar_version(mar: Path) -> tuple[str, str]:
    """(model name, version) from an archive's MANIFEST.json."""
    with zipfile.ZipFile(mar) as z:
        model = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
    return model["modelName"], model["modelVersion"]


def stage_archive(mar: Path, model: str, version: str, model_store: Path) -> tuple[str, bool]:
    """The archive in the model store under a per-version name -> (file name, whether it was
    copied now). An archive of that name with other content is never overwritten: refused."""
    name = f"{model}-v{version}.mar"
    target = Path(model_store) / name
    if target.exists():
        if archive_digest(target) != archive_digest(mar):
            raise ValueError(
                f"{target} exists with other content: refusing to overwrite an archive the model store "
                f"may serve or roll back to. Archive the new model with another version (make mar VERSION=...)."
            )
        return name, False
    partial = target.with_name(f".{name}.partial")
    shutil.copyfile(mar, partial)
    os.replace(partial, target)
    return name, True


def archive_digest(path: Path) -> str:
    """What an archive holds, whenever it was built: every member's name and bytes, the manifest
    without its build time (`createdOn`), so an archive built again from the same inputs is the
    same archive. A file that is not a zip is taken byte for byte."""
    sha = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as z:
            for name in sorted(n for n in z.namelist() if not n.endswith("/")):
                data = z.read(name)
                if name == "MAR-INF/MANIFEST.json":
                    manifest = json.loads(data)
                    manifest.pop("createdOn", None)
                    data = json.dumps(manifest, sort_keys=True).encode()
                sha.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def live_requests(metrics_url: str, model: str) -> tuple[float, float]:
    """(requests answered, of them errors) of `model` so far, from TorchServe's Prometheus text."""
    total = errors = 0.0
    text = requests.get(f"{metrics_url.rstrip('/')}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("image_classifier_requests_total{") and f'model_name="{model}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            total += value
            errors += 0 if 'outcome="ok"' in line else value
    return total, errors


def retrying(action, recover_s: float, what: str, log=print):
    """`action()`, retried while TorchServe does not answer (connection errors, timeouts), for up
    to `recover_s` seconds; an answer, even an error, ends the retries."""
    deadline, delay = time.monotonic() + recover_s, 0.5
    while True:
        try:
            return action()
        except (requests.ConnectionError, requests.Timeout) as exc:
            if time.monotonic() + delay > deadline:
                raise
            log(f"  {what}: no answer ({type(exc).__name__}); retrying")
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def drain(client, model: str, version: str, timeout_s: float = 30.0) -> None:
    """Wait until no request waits in `version`'s queue (or `timeout_s`): TorchServe answers none
    of the requests still queued for a version it unregisters."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            desc = client.management("GET", f"/models/{model}/{version}").json()[0]
        except (ApiError, requests.RequestException, ValueError, KeyError, IndexError):
            return
        if not desc.get("jobQueueStatus", {}).get("pendingRequests"):
            return
        time.sleep(0.2)
