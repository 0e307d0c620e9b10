#!/usr/bin/env python
"""Check every kustomization under deploy/ offline: it renders with `kubectl kustomize`; each
KServe object validates against KServe's own CRD schema with unknown fields refused (the CRD
alone lets a misspelt key through) and names a known protocol; every other object passes
kubernetes-validate in strict mode, warnings counted as failures.

    .venv/bin/python scripts/validate_deploy.py --crds DIR [KUSTOMIZATION ...]

DIR holds KServe's CRD files, as its repository publishes them under config/crd/full/:
    mkdir -p crds && for f in inferenceservices servingruntimes clusterservingruntimes; do
      curl -fsSL -o crds/serving.kserve.io_$f.yaml \
        https://raw.githubusercontent.com/kserve/kserve/master/config/crd/full/serving.kserve.io_$f.yaml; done
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import cache
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
KSERVE_KINDS = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
}
PROTOCOLS = ("v1", "v2", "grpc-v2")


def kustomizations(root: Path = ROOT / "deploy") -> list[Path]:
    return sorted(p.parent for p in root.rglob("kustomization.yaml"))


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR` -> its objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError(
            "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/); "
            "its built-in kustomize renders deploy/"
        )
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        raise ValueError(f"kubectl kustomize {directory} failed: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def strict(schema):
    """A copy of an OpenAPI schema whose objects refuse properties they do not declare."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(crds: Path, kind: str, version: str) -> dict:
    crd = yaml.safe_load((crds / KSERVE_KINDS[kind]).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: the API server's own check
            return schema
    raise ValueError(f"{kind}: the CRD has no version {version!r}")


def protocol_errors(obj: dict) -> list[str]:
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "protocolVersion":
                    found.append((f"{path}.{key}", value))
                elif key == "protocolVersions" and isinstance(value, list):
                    found.extend((f"{path}.{key}[{i}]", v) for i, v in enumerate(value))
                else:
                    walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(obj.get("spec", {}), "spec")
    return [f"{where} is {value!r}, not one of {PROTOCOLS}" for where, value in found if value not in PROTOCOLS]


def kserve_errors(obj: dict, crds: Path) -> list[str]:
    group, _, version = obj.get("apiVersion", "").partition("/")
    if group != "serving.kserve.io":
        return [f"apiVersion {obj.get('apiVersion')!r} is not serving.kserve.io"]
    validator = jsonschema.Draft7Validator(crd_schema(crds, obj["kind"], version))
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(obj)]
    return errors + protocol_errors(obj)


def core_errors(obj: dict) -> list[str]:
    import kubernetes_validate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{'.'.join(map(str, exc.path)) or '(top)'}: {exc.message}"]
        except kubernetes_validate.SchemaNotFoundError as exc:
            return [f"no schema for {obj.get('apiVersion')}/{obj.get('kind')}: {exc}"]
    return [f"warning: {w.message}" for w in caught]


def rule_errors(obj: dict) -> list[str]:
    """A PrometheusRule (whose CRD the Prometheus Operator owns): its groups through `promtool check rules`."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return ["promtool not found: install Prometheus (Debian: apt-get install prometheus) to check the rules"]
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as rules:
        yaml.safe_dump({"groups": obj.get("spec", {}).get("groups", [])}, rules)
        rules.flush()
        out = subprocess.run([promtool, "check", "rules", rules.name], capture_output=True, text=True)
    return [] if out.returncode == 0 else [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]


def check(directory: Path, crds: Path) -> list[str]:
    """Every problem in one kustomization, as 'Kind/name: problem' lines (none: it is valid)."""
    problems = []
    for obj in render(directory):
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") in KSERVE_KINDS:
            errors = kserve_errors(obj, crds)
        elif obj.get("kind") == "PrometheusRule":
            errors = rule_errors(obj)
        else:
            errors = core_errors(obj)
        problems += [f"{name}: {e}" for e in errors]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="kustomization folders (default: all under deploy/)")
    parser.add_argument(
        "--crds",
        type=Path,
        required=True,
        help="folder of KServe's CRD files (config/crd/full/ of KServe's repository)",
    )
    args = parser.parse_args(argv)
    missing = [f for f in KSERVE_KINDS.values() if not (args.crds / f).exists()]
    if missing:
        parser.error(f"{args.crds} lacks {missing}: fetch them as this script's docstring shows")
    failed = False
    for directory in args.dirs or kustomizations():
        problems = check(directory, args.crds)
        print(f"{'FAIL' if problems else 'ok  '} {directory}")
        for p in problems:
            print(f"     {p}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
