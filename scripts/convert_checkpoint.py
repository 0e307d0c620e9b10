#!/usr/bin/env python
"""Convert a training checkpoint into this project's checkpoint format, validated on the way.

Accepts a bare state dict or the usual training layouts ({"model_state_dict" | "state_dict" |
"model": ...} beside optimizer state), with DataParallel/DDP ("module.") and torch.compile
("_orig_mod.") prefixes. Loads with weights_only=True unless --allow-unsafe-pickle.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handlers.model.checkpoint import build_architecture, load_classifier  # noqa: E402
from modeltools.convert import extract_state_dict, load_training_checkpoint, read_labels, recipe_for, strip_prefixes  # noqa: E402
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
    if weights:  # recorded in the architecture, as torchvision:ARCH.WEIGHTS
        architecture = f"{architecture}.{weights}"
    state_dict = extract_state_dict(load_training_checkpoint(source, allow_unsafe))
    model = build_architecture(architecture, num_classes=len(labels))
    state_dict = strip_prefixes(state_dict, model.state_dict().keys())
    recipe = recipe_for(architecture, recipe_json)
    save_checkpoint(output, state_dict, architecture, recipe, labels, version)
    if allow_unsafe:  # record the opt-in in the checkpoint, and so in every archive built from it
        ckpt = torch.load(output, weights_only=True)
        ckpt["unsafe_source"] = True
        torch.save(ckpt, output)
    model, info = load_classifier(output, torch.device("cpu"))  # strict key/shape check
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, *recipe.crop_hw))
    if out.shape[-1] != len(labels):
        raise ValueError(f"model outputs {out.shape[-1]} classes for {len(labels)} labels")
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
