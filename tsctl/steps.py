"""What tsctl's multi-step commands (rollout, experiments) share: staging an archive in the model
store without ever overwriting one, and retrying a step while TorchServe does not answer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests

from tsctl.client import ApiError

PROGRESS_EVERY_S = 5.0  # a command that waits says how far it is this often

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


@dataclass(frozen=True)
class Outcomes:
    """Requests answered so far, from TorchServe's Prometheus text: the model's requests by the
    handler's outcome, and the frontend's own 5xx (503 with no worker or a full queue, 507, a
    worker's timeout), which never reach the handler. The frontend counts per host, not per
    model: on a host serving several models, another model's 5xx count here too."""

    total: float = 0.0
    server_errors: float = 0.0  # the handler's 500s for this model
    client_errors: float = 0.0  # 4xx: the client's fault, never a reason to roll back
    frontend_5xx: float = 0.0  # every 5xx the frontend sent, the handler's included

    def since(self, base: Outcomes) -> Outcomes:
        return Outcomes(*(getattr(self, f) - getattr(base, f) for f in ("total", "server_errors", "client_errors",
                                                                        "frontend_5xx")))  # fmt: skip

    @property
    def failed(self) -> float:
        """Answers that were the server's fault: the handler's 500s, or the frontend's 5xx if more."""
        return max(self.server_errors, self.frontend_5xx)

    @property
    def answered(self) -> float:
        return self.total + max(0.0, self.frontend_5xx - self.server_errors)  # 5xx the handler never saw


def live_requests(metrics_url: str, model: str) -> Outcomes:
    """What TorchServe answered so far (Outcomes), from its Prometheus text."""
    total = server = client = frontend = 0.0
    text = requests.get(f"{metrics_url.rstrip('/')}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("image_classifier_requests_total{") and f'model_name="{model}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            total += value
            server += value if 'outcome="server_error"' in line else 0
            client += value if 'outcome="client_error"' in line else 0
        elif line.startswith(("Requests5XX{", "Requests5XX ")):
            frontend += float(line.rsplit(" ", 1)[1])
    return Outcomes(total, server, client, frontend)


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
