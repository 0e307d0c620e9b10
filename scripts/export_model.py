#!/usr/bin/env python
"""Export a checkpoint (this project's format) to TorchScript, torch.export or ONNX, verified first.

Before writing, the program and the eager model run the same real photos (preprocessed with the
model's own recipe); any top-1 difference, or a logit difference over --tolerance, refuses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handlers.model.checkpoint import load_classifier  # noqa: E402
from handlers.model.recipe import normalize  # noqa: E402
from handlers.request.decoding import decode_image  # noqa: E402
from handlers.request.pixels import recipe_pixels  # noqa: E402
from modeltools.onnx_export import save_onnx  # noqa: E402
from modeltools.save import save_exported, save_torchscript  # noqa: E402

# onnx: for ONNX Runtime, OpenVINO or Triton (dynamic batch; recipe, labels and version in the
# model's metadata), verified with ONNX Runtime; the handler serves the other two.
SAVERS = {"torchscript": save_torchscript, "export": save_exported, "onnx": save_onnx}


def photo_batch(photos: Path, recipe) -> torch.Tensor:
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ValueError(f"no photos in {photos} to verify the export with")
    pixels = torch.stack([recipe_pixels(decode_image(f.read_bytes(), 10**9), recipe) for f in files])
    return normalize(pixels, recipe)


def compare(eager: torch.nn.Module, program, x: torch.Tensor) -> tuple[float, int]:
    """(max |logit difference|, number of images whose top-1 differs)."""
    with torch.inference_mode():
        a, b = eager(x).float(), program(x).float()
    return float((a - b).abs().max()), int((a.argmax(1) != b.argmax(1)).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--format", choices=sorted(SAVERS), required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=ROOT / "samples", help="photos the export is verified on")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max absolute logit difference")
    args = parser.parse_args(argv)
    model, info = load_classifier(args.checkpoint, torch.device("cpu"))
    x = photo_batch(args.photos, info.recipe)
    tmp = args.output.with_name(f".partial-{args.output.name}")  # keeps the suffix (.pt2, .onnx) each format wants
    try:
        program = SAVERS[args.format](model, x[:2], tmp, info)
        runnable = program.module() if args.format == "export" else program
        diff, flips = compare(model, runnable, x)
        print(f"verified on {len(x)} photos: max |logit diff| {diff:.2e}, top-1 differs on {flips}")
        if flips or diff > args.tolerance:
            print(f"error: the {args.format} program does not match the eager model; nothing written", file=sys.stderr)
            return 2
        tmp.replace(args.output)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {args.output} ({args.format}, {info.architecture} v{info.version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
