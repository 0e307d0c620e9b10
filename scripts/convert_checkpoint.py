#!/usr/bin/env python
"""Convert a training checkpoint into this project's checkpoint format, validated on the way.

Accepts a bare state dict or the usual training layouts ({"model_state_dict" | "state_dict" |
"model": ...} beside optimizer state), with DataParallel/DDP ("module.") and torch.compile
("_orig_mod.") prefixes. Loads with weights_only=True unless --allow-unsafe-pickle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handlers.model.checkpoint import build_architecture, load_classifier  # noqa: E402
from modeltools.convert import (  # noqa: E402
    architecture_suggestions,
    extract_state_dict,
    load_training_checkpoint,
    read_labels,
    recipe_for,
    strip_prefixes,
)
from modeltools.save import save_checkpoint  # noqa: E402


def convert(
    source: Path,
    architecture: str,
    labels: list[str],
    recipe_json: dict | None,
    version: str,
    output: Path,
    allow_unsafe: bool = False,
    weights: str | None = None,
) -> str:
    """`source` converted and checked, then written to `output` (nothing is written on failure);
    errors name `source`."""
    if not Path(source).is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if weights:  # recorded in the architecture, as torchvision:ARCH.WEIGHTS
        architecture = f"{architecture}.{weights}"
    state_dict = extract_state_dict(load_training_checkpoint(source, allow_unsafe))
    try:
        model = build_architecture(architecture, num_classes=len(labels))
    except ValueError as exc:
        raise ValueError(f"{exc}{architecture_suggestions(architecture)}") from None
    state_dict = strip_prefixes(state_dict, model.state_dict().keys())
    recipe = recipe_for(architecture, recipe_json)
    output = Path(output)
    partial = output.with_name(f".{output.name}.partial")
    try:
        save_checkpoint(partial, state_dict, architecture, recipe, labels, version)
        if allow_unsafe:  # record the opt-in in the checkpoint, and so in every archive built from it
            ckpt = torch.load(partial, weights_only=True)
            ckpt["unsafe_source"] = True
            torch.save(ckpt, partial)
        try:
            model, info = load_classifier(partial, torch.device("cpu"))  # strict key/shape check
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{source} does not fit {architecture} with {len(labels)} labels: "
                             f"{str(exc).replace(str(partial), str(output))}") from None  # fmt: skip
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, *recipe.crop_hw))
        if out.shape[-1] != len(labels):
            raise ValueError(f"{source}: the model outputs {out.shape[-1]} classes for {len(labels)} labels")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return f"{architecture} v{version}, {len(labels)} classes, recipe {recipe.to_dict()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="training checkpoint or state dict")
    parser.add_argument(
        "--architecture",
        required=True,
        help="timm:ARCH[.TAG] (the tag's pretrained config gives the recipe, e.g. "
        "timm:convnextv2_nano.fcmae_ft_in22k_in1k_384) or torchvision:ARCH[.WEIGHTS]",
    )
    parser.add_argument(
        "--labels", required=True, help="index_to_name.json, a JSON list, a text file (one label a line), or 'imagenet'"
    )
    parser.add_argument(
        "--recipe",
        help="JSON recipe (crop_size, resize_size, interpolation, mean, std, crop_mode); "
        "default: the library's own, see --architecture and --weights",
    )
    parser.add_argument(
        "--weights",
        help="torchvision weights whose transforms give the recipe (IMAGENET1K_V2); "
        "the same as --architecture torchvision:ARCH.WEIGHTS",
    )
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help="allow arbitrary unpickling of a TRUSTED file (can run code); recorded in the output",
    )
    args = parser.parse_args(argv)
    try:
        if args.labels == "imagenet":
            from torchvision.models import ResNet50_Weights

            labels = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        else:
            labels = read_labels(args.labels)
        recipe = json.loads(args.recipe) if args.recipe else None
        summary = convert(
            args.input,
            args.architecture,
            labels,
            recipe,
            args.version,
            args.output,
            args.allow_unsafe_pickle,
            args.weights,
        )
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
