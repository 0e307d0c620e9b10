#!/usr/bin/env python
"""`make kserve-bundle`: what a KServe storageUri must hold for KServe's TorchServe runtime.

    build/kserve/MODEL_NAME/vVERSION/   (one folder per version: a new one never replaces the last)
      config/config.properties   TorchServe's configuration inside the pod
      config/metrics.yaml        this handler's metrics (config.properties points here)
      model-store/MODEL_NAME.mar

KServe mounts the storageUri at /mnt/models and starts `torchserve --start
--model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`;
its wrapper in the same pod listens on 8080 and forwards to TorchServe's inference address.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from build_mar import archive, model_config  # noqa: E402

MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri's content
# KServe's wrapper owns 8080 (REST) and 8081 (gRPC) in the pod: none of TorchServe's ports may take them.
WRAPPER_PORTS = (8080, 8081)
PORTS = {"inference": 8085, "management": 8086, "metrics": 8082, "grpc": 7070, "grpc_management": 7071}

CONFIG = """\
# TorchServe inside a KServe pod, behind KServe's wrapper (made by `make kserve-bundle`).
# KServe starts: torchserve --start --model-store={mount}/model-store --ts-config={mount}/config/config.properties
# then its wrapper, which listens on 8080 (REST) and 8081 (gRPC) and forwards to the addresses below
# (REST to the inference address, gRPC to the gRPC inference port); no port here may be 8080 or 8081.
model_store={mount}/model-store
inference_address=http://127.0.0.1:{inference}
management_address=http://127.0.0.1:{management}
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
grpc_inference_port={grpc}
grpc_management_port={grpc_management}
# Prometheus scrapes the pod on 8082 (the ServingRuntime's prometheus.kserve.io annotations).
metrics_address=http://0.0.0.0:{metrics}
metrics_mode=prometheus
metrics_config={mount}/config/metrics.yaml

# Token authorization is OFF in this file only, and only because TorchServe listens on loopback
# inside the pod: nothing outside the pod reaches it, and KServe's wrapper, the one caller, sends
# no token (it also asks the management API, without one, whether the model is ready). What
# protects the service is in front of the pod: KServe's ingress (Istio/Knative or the Gateway
# API) with its authentication and authorization policies (docs/KUBERNETES.md, "Security").
# Every config for a host keeps token authorization on.
disable_token_authorization=true
# KServe rolls versions (a new storageUri, canaryTrafficPercent); no registration in the pod.
enable_model_api=false
# Models load from the model store only, never from a URL.
allowed_urls=file://{mount}/model-store/[^/]*[.]mar
# No enable_envvars_config: TS_SERVICE_ENVELOPE, which KServe's runtime sets, stays unread, so
# TorchServe's single-request envelopes stay off and the handler reads each request's
# protocol itself, keeping TorchServe's batching.

max_request_size={max_request_size}
max_response_size={max_response_size}
model_snapshot={snapshot}
"""


def host_limits() -> dict:
    """The size limits of the host's config.properties, so a pod accepts what a host accepts."""
    props = {}
    for line in (ROOT / "config.properties").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            props[key.strip()] = value.strip()
    return {k: props[k] for k in ("max_request_size", "max_response_size")}


def snapshot(name: str, version: str, config: dict, workers: int) -> str:
    model = {
        "defaultVersion": True,
        "marName": f"{name}.mar",
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": config["batchSize"],
        "maxBatchDelay": config["maxBatchDelay"],
        "responseTimeout": config["responseTimeout"],
    }
    return json.dumps(
        {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: model}}}, separators=(",", ":")
    )


def write_bundle(
    checkpoint: Path, name: str, version: str, out: Path, sets: list[str], workers: int = 1, mount: str = MOUNT
) -> Path:
    """The bundle in out/NAME/vVERSION, its config naming `mount` as where the storageUri is mounted."""
    assert not set(PORTS.values()) & set(WRAPPER_PORTS), "TorchServe's ports must leave the wrapper's free"
    bundle = out / name / f"v{version}"
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "config").mkdir(parents=True)
    config = model_config(ROOT / "model-config.yaml", sets)
    archive(checkpoint, name, version, bundle / "model-store", config)
    (bundle / "config" / "config.properties").write_text(
        CONFIG.format(mount=mount, **PORTS, **host_limits(), snapshot=snapshot(name, version, config, workers))
    )
    shutil.copy(ROOT / "metrics.yaml", bundle / "config" / "metrics.yaml")
    return bundle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--model-name", default="efficientnet_lite0")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "kserve")
    parser.add_argument("--workers", type=int, default=1, help="TorchServe workers per pod (one per GPU; CPU: 1)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model-config.yaml overrides, as build_mar.py takes them (batchSize=16)",
    )
    parser.add_argument("--mount", default=MOUNT, help="where the pod mounts the storageUri (KServe: /mnt/models)")
    args = parser.parse_args(argv)
    bundle = write_bundle(args.checkpoint, args.model_name, args.version, args.out, args.set, args.workers, args.mount)
    print(f"KServe storage bundle: {bundle}")
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(bundle)}  ({path.stat().st_size:,} bytes)")
    print(
        f"Upload its content to the storageUri of the InferenceService, e.g.: aws s3 cp --recursive {bundle} "
        f"s3://BUCKET/{args.model_name}/v{args.version}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
