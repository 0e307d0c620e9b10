"""The pod KServe makes for the shipped InferenceService, run on this machine with podman (or
docker), from the kustomize output itself: the ServingRuntime's container (image, arguments with
`{{.Name}}` filled in, environment, ports, probes, securityContext, the InferenceService's
resources, its emptyDirs) as container flags, after the storage initializer's step done by
KServe's own storage code (the kserve-storage package) into the /mnt/models emptyDir.

    .venv/bin/python scripts/kserve_pod.py start --image ts-image-classifier:0.1.0-cpu \\
        --storage-uri build/kserve/efficientnet_lite0/v1.0
    .venv/bin/python scripts/kserve_pod.py stop

A local storageUri (a folder or file://) is linked by KServe's storage code, not copied, as for
a PVC: the folder is mounted read-only at the same path, so the links resolve in the container.
REST is published on 127.0.0.1:8080 and gRPC on 8081 (--http-port, --grpc-port).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "kserve" / "base"
MODELS = "/mnt/models"  # where KServe mounts the storage initializer's emptyDir
# what this machine's kernel allows a container (Debian's podman with runc, host ulimits)
ENGINE_FLAGS = {"podman": ["--runtime", "runc"], "docker": []}
ULIMITS = ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=1000:1000"]


def render(directory: Path = BASE) -> dict:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out) if doc}


def engine() -> str:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise RuntimeError("no container engine: docker with its daemon, or podman (apt-get install podman runc)")


def _quantity_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


@dataclass
class Pod:
    """The predictor pod of `deploy/kserve/base`'s InferenceService, as flags for one container."""

    image: str
    storage_uri: str
    work: Path
    http_port: int = 8080
    grpc_port: int = 8081
    engine: str = field(default_factory=engine)
    objects: dict = field(default_factory=render)

    @property
    def name(self) -> str:
        return self.objects["InferenceService"]["metadata"]["name"]

    @property
    def container_name(self) -> str:
        return f"{self.name}-predictor"

    @property
    def spec(self) -> dict:
        """The predictor container as KServe makes it: the runtime's, with the model's resources."""
        runtime = self.objects["ServingRuntime"]["spec"]
        container = json.loads(json.dumps(runtime["containers"][0]).replace("{{.Name}}", self.name))
        resources = self.objects["InferenceService"]["spec"]["predictor"]["model"].get("resources")
        if resources:
            container["resources"] = resources
        return container

    @property
    def volumes(self) -> dict:
        return {v["name"]: v for v in self.objects["ServingRuntime"]["spec"].get("volumes", [])}

    def storage_initializer(self) -> Path:
        """KServe's storage-initializer step: its storage code puts the storageUri in the emptyDir."""
        models = self.work / "kserve-provision-location"
        shutil.rmtree(models, ignore_errors=True)
        models.mkdir(parents=True)
        code = "import sys; from kserve_storage import Storage; Storage.download_files([sys.argv[1]], [sys.argv[2]])"
        python = storage_python(ROOT / "build" / "storage-venv")
        subprocess.run([str(python), "-c", code, self.storage_uri, str(models)], check=True, capture_output=True)
        return models

    def flags(self, models: Path) -> list[str]:
        c = self.spec
        sec = c.get("securityContext", {})
        flags = ["--name", self.container_name, *ENGINE_FLAGS[self.engine], *ULIMITS]
        if sec.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        if sec.get("runAsUser") is not None:
            flags += ["--user", str(sec["runAsUser"])]
        for cap in sec.get("capabilities", {}).get("drop", []):
            flags += ["--cap-drop", cap]
        if sec.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        # seccompProfile RuntimeDefault: the engine's default profile, which runs unless told otherwise
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            flags += ["--memory", str(_quantity_bytes(limits["memory"]))]
        if "cpu" in limits:  # at most this machine's cores: an engine refuses more
            flags += ["--cpus", str(min(float(limits["cpu"]), os.cpu_count() or 1))]
        for env in c.get("env", []):
            flags += ["--env", f"{env['name']}={env['value']}"]
        for mount in c.get("volumeMounts", []):
            volume = self.volumes[mount["name"]]
            assert "emptyDir" in volume, f"only emptyDirs are emulated, not {volume}"
            folder = self.work / "volumes" / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, int(sec.get("runAsUser", 0)), 0) if os.geteuid() == 0 else None
            flags += ["--volume", f"{folder}:{mount['mountPath']}:rw"]
        flags += ["--volume", f"{models}:{MODELS}:ro"]  # KServe mounts it read-only in the predictor
        source = Path(self.storage_uri.removeprefix("file://")).resolve()
        flags += ["--volume", f"{source}:{source}:ro"]  # the links' targets
        flags += ["--publish", f"127.0.0.1:{self.http_port}:8080", "--publish", f"127.0.0.1:{self.grpc_port}:8081"]
        probe = c.get("livenessProbe", {})
        if "httpGet" in probe:
            url = f"http://127.0.0.1:{probe['httpGet']['port']}{probe['httpGet']['path']}"
            check = f"python -c \"import urllib.request; urllib.request.urlopen('{url}', timeout=1)\""
            flags += ["--health-cmd", check, "--health-interval", f"{probe.get('periodSeconds', 10)}s",
                      "--health-retries", str(probe.get("failureThreshold", 3)),
                      "--health-start-period", f"{probe.get('initialDelaySeconds', 0)}s"]  # fmt: skip
        return flags

    def command(self) -> list[str]:
        """The container's command line: its args after the image's entrypoint."""
        c = self.spec
        return [*c.get("command", []), *c.get("args", [])]

    def start(self) -> float:
        """The storage initializer, then the predictor container; seconds to ready."""
        self.stop()
        models = self.storage_initializer()
        run = [self.engine, "run", "--detach", *self.flags(models), self.image, *self.command()]
        started = time.monotonic()
        subprocess.run(run, check=True, capture_output=True)
        return self.wait_ready(started)

    def wait_ready(self, started: float, timeout: float = 300) -> float:
        """The readiness probe's URL, through the published port, until it answers 200."""
        probe = self.spec["readinessProbe"]["httpGet"]
        url = f"http://127.0.0.1:{self.http_port}{probe['path']}"
        while time.monotonic() - started < timeout:
            if not self.running():
                raise RuntimeError(f"the container exited:\n{self.logs()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"not ready within {timeout} s:\n{self.logs()}")

    def running(self) -> bool:
        out = subprocess.run([self.engine, "inspect", "--format", "{{.State.Running}}", self.container_name],
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip() == "true"

    def logs(self, tail: int = 60) -> str:
        out = subprocess.run([self.engine, "logs", "--tail", str(tail), self.container_name], capture_output=True,
                             text=True)  # fmt: skip
        return out.stdout + out.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.engine, "exec", self.container_name, *command], capture_output=True, text=True)

    def memory(self) -> tuple[int, int]:
        """(resident bytes, limit bytes) as the engine's stats read the container's cgroup."""
        out = subprocess.run([self.engine, "stats", "--no-stream", "--format", "json", self.container_name],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        stats = json.loads(out)
        stats = stats[0] if isinstance(stats, list) else stats
        used, limit = stats.get("mem_usage") or stats.get("MemUsage"), None
        if isinstance(used, str):  # "1.2GB / 4.295GB"
            used, limit = (_size(part) for part in used.split("/"))
        return int(used), int(limit or stats.get("mem_limit", 0))

    def stop(self) -> None:
        subprocess.run([self.engine, "rm", "--force", "--time", "10", self.container_name], capture_output=True)


def _size(text: str) -> float:
    text = text.strip()
    units = {"kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "B": 1}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def storage_python(venv: Path) -> Path:
    """A Python with KServe's storage package (kserve-storage, as its storage-initializer image
    holds it), made once in `venv`."""
    python = venv / "bin" / "python"
    if not (venv / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "kserve-storage"], check=True, capture_output=True)
        (venv / ".ready").touch()
    return python


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--image", default="ts-image-classifier:0.1.0-cpu")
    parser.add_argument("--storage-uri", default=str(ROOT / "build" / "kserve" / "efficientnet_lite0" / "v1.0"))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "pod")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    args = parser.parse_args(argv)
    pod = Pod(args.image, args.storage_uri, args.work, args.http_port, args.grpc_port)
    if args.action == "stop":
        pod.stop()
        return 0
    print(f"ready in {pod.start():.1f} s: {pod.container_name} on 127.0.0.1:{args.http_port} (REST), "
          f"{args.grpc_port} (gRPC)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
