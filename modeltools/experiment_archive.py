"""Two archives -> one experiment archive: the primary's files as they are, the candidate's
checkpoint, ONNX file and reference photos under candidate/, the experiment in the primary's
model-config.yaml (`handler: {experiment: ...}`), and an entry file that serves it with
handlers/experiment_classifier.py. TorchServe registers it as a version of the primary's model,
so set-default starts and stops the experiment at once."""

from __future__ import annotations

import json
import secrets
import zipfile
from pathlib import Path

import yaml

from handlers.experiment.config import CANDIDATE_DIR, ExperimentConfig

ENTRY = "experiment_handler.py"
ENTRY_CODE = '''"""An experiment archive's entry point (modeltools/experiment_archive.py)."""

from handlers.experiment_classifier import ExperimentClassifier


class ExperimentHandler(ExperimentClassifier):
    pass
'''
CANDIDATE_FILES = ("model.onnx", "reference.pt", "verification.json", "model.int8.onnx")


def _plain_member(name: str) -> bool:
    """A member path that stays inside the archive: relative, no '..', no backslashes."""
    return bool(name) and "\\" not in name and not name.startswith("/") and ".." not in name.split("/")


def read_archive(mar: Path) -> tuple[dict, dict, dict]:
    """(manifest's model section, model-config.yaml, {name: bytes})."""
    with zipfile.ZipFile(mar) as z:
        files = {name: z.read(name) for name in z.namelist() if not name.endswith("/")}
    manifest = json.loads(files["MAR-INF/MANIFEST.json"])
    config = yaml.safe_load(files.get("model-config.yaml", b"")) or {}
    return manifest, config, files


def experiment_version(primary: str, mode: str, candidate: str) -> str:
    return f"{primary}-{mode}-{candidate}"


def combine(
    primary: Path,
    candidate: Path,
    out: Path,
    mode: str,
    sample: float = 0.1,
    share: float = 0.5,
    key_header: str = "x-user-id",
    model_name: str | None = None,
) -> str:
    """Write the experiment archive of `primary` and `candidate` to `out`, registered as a version
    of the primary's model (or of `model_name`); returns its version."""
    manifest, config, files = read_archive(primary)
    c_manifest, c_config, c_files = read_archive(candidate)
    if "handlers/experiment_classifier.py" not in files:
        raise ValueError(f"{primary} predates experiments (no handlers/experiment_classifier.py): archive it again")
    model, c_model = manifest["model"], c_manifest["model"]
    serialized = c_model["serializedFile"]
    if not _plain_member(serialized) or serialized not in c_files:
        raise ValueError(f"{candidate}: its manifest's serializedFile {serialized!r} is not a file of the archive")
    experiment = ExperimentConfig(mode, f"{CANDIDATE_DIR}/{serialized}", c_model["modelVersion"],
                                  model["modelVersion"], sample, share, key_header.lower(), secrets.token_hex(8),
                                  bool((c_config.get("handler") or {}).get("trust_program")))  # fmt: skip
    ExperimentConfig.from_dict(experiment.to_dict())  # the checks the worker makes, now
    handler = dict(config.get("handler") or {})  # the primary's own settings: trust stays its own
    handler["experiment"] = experiment.to_dict()
    config["handler"] = handler
    version = experiment_version(model["modelVersion"], mode, c_model["modelVersion"])
    manifest["model"] = {
        **model,
        "modelVersion": version,
        "handler": ENTRY,
        "modelName": model_name or model["modelName"],
    }
    combined = {
        name: data for name, data in files.items() if name not in ("MAR-INF/MANIFEST.json", "model-config.yaml")
    }
    combined[f"{CANDIDATE_DIR}/{serialized}"] = c_files[serialized]
    for name in CANDIDATE_FILES:
        if name in c_files:
            combined[f"{CANDIDATE_DIR}/{name}"] = c_files[name]
    combined["model-config.yaml"] = yaml.safe_dump(config, sort_keys=False).encode()
    combined[ENTRY] = ENTRY_CODE.encode()
    combined["MAR-INF/MANIFEST.json"] = json.dumps(manifest, indent=2).encode()
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in combined.items():
            z.writestr(name, data)
    partial.replace(out)
    return version
