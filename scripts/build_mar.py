#!/usr/bin/env python
"""Archive a checkpoint in this project's format as a self-contained TorchServe .mar.

The checkpoint is loaded and run once on a dummy input before anything is written, so a
checkpoint that does not fit its architecture fails here, not at the first request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handlers.model.checkpoint import assert_inference_ready, load_classifier  # noqa: E402
from handlers.model.onnx_backends import INT8_FILE  # noqa: E402
from handlers.model.reference import FILE as REFERENCE_FILE  # noqa: E402
from handlers.model.verification import FILE as VERIFICATION_FILE  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from modeltools.serving_extras import export_serving_onnx, reference_set  # noqa: E402

PACKAGE = ROOT / "handlers"


def validate(checkpoint: Path, settings: Settings, version: str) -> tuple[torch.nn.Module, object, str]:
    """Load the checkpoint as the handler will and run one dummy batch -> (eager model, info, a
    summary line naming the archive's `version` (what TorchServe serves) and the checkpoint's
    where it differs)."""
    model, info = load_classifier(
        checkpoint, torch.device("cpu"), settings.enabled("channels_last"), settings.trust_program
    )
    assert_inference_ready(model)
    with torch.inference_mode():
        logits = model(torch.zeros(2, 3, *info.recipe.crop_hw))
    if tuple(logits.shape) != (2, len(info.labels)):
        raise ValueError(
            f"{checkpoint}: model outputs {tuple(logits.shape)} for 2 images; "
            f"expected (2, {len(info.labels)}) for {len(info.labels)} labels"
        )
    unsafe = ""
    if settings.trust_program and info.unsafe_source:
        unsafe = " - WARNING: a program (code) served with --trust-program (unsafe_source is recorded)"
    elif info.unsafe_source:
        unsafe = " - WARNING: converted with --allow-unsafe-pickle (unsafe_source is recorded)"
    own = "" if info.version == version else f" (the checkpoint's own version: {info.version})"
    (h, w), mode = info.recipe.crop_hw, info.recipe.crop_mode
    summary = (
        f"{info.architecture} version {version}{own}, {len(info.labels)} classes, input {h}x{w} ({mode} crop){unsafe}"
    )
    return model, info, summary


def serving_extras(
    model, info, stage: Path, reference_images: Path, onnx: bool, settings: Settings, build_torch,
    verify_images: Path | None = None, calibration_images: Path | None = None, profile_images: Path | None = None,
) -> tuple[list[Path], str]:  # fmt: skip
    """The reference photos, with `onnx` the ONNX file every other backend serves, and with
    `verify_images` the verification record (and an int8 file where the settings ask for int8),
    in `stage` -> (their paths, lines saying what the archive's backends will be)."""
    if settings.changes_answers and verify_images is None:
        raise ValueError(
            f"handler settings precision {settings.precision} / pixels {settings.pixels} change the answers: "
            "give --verify-images DIR (hundreds of your own photos) to measure what that costs against the "
            "float32 answers, or leave them at their defaults"
        )
    reference = reference_set(model, info.recipe, reference_images, profile_images or verify_images)
    reference.save(stage / REFERENCE_FILE)
    files = [stage / REFERENCE_FILE]
    if not onnx:
        backends = "backends: torch (--no-onnx)"
    else:
        try:
            print("exporting the ONNX file ONNX Runtime and OpenVINO serve, and verifying it ...", file=sys.stderr)
            verdict = export_serving_onnx(model, info.recipe, stage / "model.onnx", reference)
            files.append(stage / "model.onnx")
            backends = (
                f"backends: torch, ONNX Runtime and OpenVINO where installed (ONNX file verified on "
                f"{len(reference.names)} reference photos: top-1 {verdict['top1_agree']})"
            )
        except ImportError as exc:
            backends = f"backends: torch (no ONNX file: {exc.name} is not installed)"
        except Exception as exc:  # a model the exporters cannot take is still served by torch
            backends = f"backends: torch (no ONNX file: {type(exc).__name__}: {exc}"[:300] + ")"
    if verify_images is None:
        return files, backends
    from modeltools.verify import measure

    onnx_file = stage / "model.onnx" if stage / "model.onnx" in files else None
    int8 = stage / INT8_FILE
    record = measure(settings, info.recipe, model, build_torch, verify_images, reference, onnx_file, int8,
                     calibration_images or reference_images)  # fmt: skip
    record.save(stage / VERIFICATION_FILE)
    files += [stage / VERIFICATION_FILE] + ([int8] if int8.exists() else [])
    passed = [label for label, e in record.candidates.items() if e.get("passed")]
    return files, f"{backends}\n  verified on {record.images} photos: {', '.join(passed) or 'none'} may serve"


def model_config(base: Path, overrides: list[str]) -> dict:
    """model-config.yaml with `key=value` overrides (`handler.topk=3` for handler settings)."""
    config = yaml.safe_load(base.read_text()) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    Settings.from_model_yaml(config)  # refuse unknown or ill-typed handler settings now
    return config


def run_archiver(*args: str) -> None:
    """torch-model-archiver with these arguments, in this Python (no console script needed)."""
    code = "from model_archiver.model_packaging import generate_model_archive as g; g()"
    subprocess.run([sys.executable, "-c", code, *args], check=True)


def build(
    checkpoint: Path,
    name: str,
    version: str,
    export: Path,
    config: dict,
    handler: Path = PACKAGE / "image_classifier.py",
    model_file: Path | None = None,
    extras: tuple[Path, ...] = (),
    file_name: str | None = None,
) -> Path:
    """Stage the handler package, config and `extras` (files for the archive's root), run
    torch-model-archiver, and place the archive in `export` as `file_name` (default NAME.mar)."""
    export.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        extra = stage / "extra"
        shutil.copytree(PACKAGE, extra / "handlers", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if model_file:  # TorchServe's eager convention: the model's class travels beside the handler
            shutil.copy(model_file, extra / model_file.name)
        for path in extras:
            shutil.copy(path, extra / path.name)
        config_file = stage / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        run_archiver(
            "--model-name",
            name,
            "--version",
            version,
            "--serialized-file",
            str(checkpoint),
            "--handler",
            str(handler),
            "--extra-files",
            str(extra),
            "--config-file",
            str(config_file),
            "--export-path",
            str(stage),
            "--force",
        )
        return place(stage / f"{name}.mar", export / (file_name or f"{name}.mar"))


def place(built: Path, target: Path) -> Path:
    """`built` moved to `target`. An archive already there is kept when it holds the same thing
    (built again from the same inputs) and replaced when it is a rebuild of the same model and
    version; one of another model or version is never overwritten (the model store may serve it)."""
    from tsctl.steps import archive_digest, mar_version

    if target.exists():
        if archive_digest(target) == archive_digest(built):
            print(f"{target} is unchanged (built again from the same inputs)", file=sys.stderr)
            return target
        held, new = mar_version(target), mar_version(built)
        if held != new:
            raise ValueError(
                f"{target} holds {held[0]} version {held[1]}: refusing to overwrite it with {new[0]} version "
                f"{new[1]} (the model store may serve it). Archive under another name (make serve CHECKPOINT=... "
                f"names archives NAME-vVERSION.mar; build_mar.py --file-name) or into another MAR_DIR"
            )
        print(f"replacing {target}: {new[0]} version {new[1]} built again from changed inputs", file=sys.stderr)
    shutil.move(built, target)
    return target


def eager_checkpoint(
    state_dict_file: Path, model_file: Path, labels: Path, recipe: str, version: str, out: Path
) -> Path:
    """A plain state dict + model file + labels + recipe -> a checkpoint in this project's format."""
    from handlers.model.recipe import Recipe
    from modeltools.convert import extract_state_dict, load_training_checkpoint, read_labels
    from modeltools.save import save_checkpoint

    if not recipe:
        raise ValueError("a plain state dict needs --recipe (JSON: crop_size, resize_size, interpolation, mean, std)")
    if not labels:
        raise ValueError("a plain state dict needs --labels (index_to_name.json, a JSON list or a text file)")
    sys.path.insert(0, str(model_file.resolve().parent))
    state_dict = extract_state_dict(load_training_checkpoint(state_dict_file))
    save_checkpoint(
        out, state_dict, f"file:{model_file.name}", Recipe.from_dict(json.loads(recipe)), read_labels(labels), version
    )
    return out


def archive(
    checkpoint: Path,
    name: str,
    version: str,
    export: Path,
    config: dict,
    handler: Path = PACKAGE / "image_classifier.py",
    model_file: Path | None = None,
    reference_images: Path = ROOT / "samples",
    onnx: bool = True,
    verify_images: Path | None = None,
    calibration_images: Path | None = None,
    file_name: str | None = None,
    profile_images: Path | None = None,
) -> tuple[Path, str]:
    """Validate the checkpoint, write its reference photos, ONNX file and verification record,
    and archive it all -> (the .mar, a summary of what it holds). ValueError, RuntimeError or
    FileNotFoundError for a model that cannot be served as it is."""
    settings = Settings.from_model_yaml(config)
    model, info, summary = validate(checkpoint, settings, version)

    def build_torch():
        return load_classifier(checkpoint, torch.device("cpu"), settings.enabled("channels_last"),
                               settings.trust_program)[0]  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        extras, backends = serving_extras(model, info, Path(tmp), reference_images, onnx, settings, build_torch,
                                          verify_images, calibration_images, profile_images)  # fmt: skip
        mar = build(checkpoint, name, version, export, config, handler, model_file, tuple(extras), file_name)
    return mar, f"{summary}\n  {backends}"


def experiment_archive(primary: Path, args, config: dict, tmp: Path) -> tuple[Path, str]:
    """The primary's archive and the candidate's (archived here from a checkpoint) as one."""
    from modeltools.experiment_archive import combine

    candidate = args.candidate
    if candidate.suffix != ".mar":
        candidate, _ = archive(
            candidate, args.model_name, args.candidate_version, tmp / "candidate", config,
            reference_images=args.reference_images, onnx=not args.no_onnx, verify_images=args.verify_images,
            calibration_images=args.calibration_images,
        )  # fmt: skip
    combined = tmp / "experiment.mar"
    version = combine(primary, candidate, combined, args.experiment, args.sample, args.share, args.key_header)
    args.export_path.mkdir(parents=True, exist_ok=True)
    out = args.export_path / f"{args.model_name}-v{version}.mar"  # as tsctl names it: never the primary's file
    shutil.move(combined, out)
    return out, f"experiment {version}: {args.experiment} of {candidate.name} beside {primary.name}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--export-path", default=ROOT / "model_store", type=Path)
    parser.add_argument(
        "--file-name", help="the archive's file name in --export-path (default MODEL_NAME.mar; never another version's)"
    )
    parser.add_argument("--config", default=ROOT / "model-config.yaml", type=Path, help="base model-config.yaml")
    parser.add_argument(
        "--handler",
        type=Path,
        default=PACKAGE / "image_classifier.py",
        help="handler entry file (a subclass of handlers.image_classifier.ImageClassifier)",
    )
    parser.add_argument(
        "--model-file",
        type=Path,
        help="TorchServe's eager convention: --checkpoint is then a plain state dict of the one "
        "nn.Module class this file defines; needs --labels and --recipe",
    )
    parser.add_argument("--labels", type=Path, help="with --model-file: index_to_name.json, a JSON list or a text file")
    parser.add_argument("--recipe", help='with --model-file: JSON, e.g. {"crop_size": 224, "resize_size": 256}')
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model-config.yaml key, e.g. batchSize=4 or handler.topk=3",
    )
    parser.add_argument(
        "--trust-program",
        action="store_true",
        help="archive a TorchScript or torch.export file: loading one runs code from it, so only "
        "for files you trust (recorded in the archive, shown in health as unsafe_source)",
    )
    parser.add_argument(
        "--reference-images",
        type=Path,
        default=ROOT / "samples",
        help="photos (up to 16) every backend is verified on before it serves; photos of your model's own "
        "domain are best (default: the repository's samples/)",
    )
    parser.add_argument(
        "--verify-images",
        type=Path,
        help="a folder of your own photos (hundreds; subfolders are read too): every backend and precision the "
        "archive may serve with is measured on them against the float32 answers, and the record travels in the "
        "archive (health shows it); needed for handler.precision bfloat16/float16/int8 and handler.pixels fast",
    )
    parser.add_argument(
        "--calibration-images",
        type=Path,
        help="with handler.precision=int8: photos the int8 ranges are calibrated on (default: --reference-images, "
        "with random crops of them up to 96); keep them apart from --verify-images",
    )
    parser.add_argument(
        "--profile-images",
        type=Path,
        help="photos like your traffic (hundreds) that input and confidence drift are measured against "
        "(default: --verify-images; with fewer than 100, each worker pins its first 500 live images instead)",
    )
    parser.add_argument("--no-onnx", action="store_true", help="no ONNX file in the archive: it serves with torch")
    experiment = parser.add_argument_group(
        "an experiment archive: a candidate model beside this one (docs/EXPERIMENTS.md)"
    )
    experiment.add_argument(
        "--candidate", type=Path, help="the candidate: a checkpoint in this project's format, or a .mar"
    )
    experiment.add_argument("--candidate-version", default="2.0", help="with a checkpoint as --candidate")
    experiment.add_argument("--experiment", choices=["shadow", "split"], default="shadow")
    experiment.add_argument("--sample", type=float, default=0.1, help="shadow: share of batches the candidate runs on")
    experiment.add_argument("--share", type=float, default=0.5, help="split: share of requests the candidate answers")
    experiment.add_argument("--key-header", default="X-User-Id", help="split: the header that assigns a request's arm")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from tsctl.state_files import checked_name

            checked_name(args.model_name, "--model-name")
            checked_name(args.version, "--version")
            checked_name(args.candidate_version, "--candidate-version")
            config = model_config(
                args.config, args.set + (["handler.trust_program=true"] if args.trust_program else [])
            )
            checkpoint = args.checkpoint
            if args.model_file:
                checkpoint = eager_checkpoint(
                    args.checkpoint,
                    args.model_file,
                    args.labels,
                    args.recipe,
                    args.version,
                    Path(tmp) / f"{args.model_name}.pt",
                )
            export = Path(tmp) / "primary" if args.candidate else args.export_path
            mar, summary = archive(checkpoint, args.model_name, args.version, export, config, args.handler,
                                   args.model_file, args.reference_images, not args.no_onnx, args.verify_images,
                                   args.calibration_images, None if args.candidate else args.file_name,
                                   args.profile_images)  # fmt: skip
            if args.candidate:
                mar, summary = experiment_archive(mar, args, config, Path(tmp))
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"wrote {mar}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
