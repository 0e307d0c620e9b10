"""int8 for CPUs with VNNI or AMX: post-training static quantization of the archive's ONNX file
with ONNX Runtime's quantizer (QDQ: int8 weights per output channel, uint8 activations, MinMax
ranges calibrated on photos the user gives). The file runs on ONNX Runtime and OpenVINO alike;
modeltools/verify.py measures each way of making it on the verification set and keeps the best.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from handlers.model.recipe import Recipe
from handlers.request.pixels import recipe_pixels
from modeltools.serving_extras import image_files

CALIBRATION_IMAGES = 96  # crops the activation ranges are measured on
WEIGHTED = ("Conv", "Gemm", "MatMul")


def calibration_pixels(folder: Path, recipe: Recipe, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """uint8 [N, 3, H, W] as served: the photos of `folder` (at most `count`), and where they are
    fewer, random crops of them (a fixed seed: the same archive every time) up to `count`."""
    from PIL import Image

    files = image_files(folder)[:count]
    if not files:
        raise ValueError(f"no photos in {folder} to calibrate int8 on (--calibration-images names a folder)")
    photos = [Image.open(f).convert("RGB") for f in files]
    out = [recipe_pixels(p, recipe) for p in photos]
    rng = random.Random(0)
    while len(out) < count:
        photo = photos[len(out) % len(photos)]
        w, h = photo.size
        scale = rng.uniform(0.35, 1.0)
        cw, ch = max(8, int(w * scale)), max(8, int(h * scale * rng.uniform(0.75, 1.33)))
        cw, ch = min(cw, w), min(ch, h)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out.append(recipe_pixels(photo.crop((left, top, left + cw, top + ch)), recipe))
    return torch.stack(out)


def weighted_layers(onnx_path: Path) -> list[str]:
    """The names of the layers with weights (convolutions, matrix products), in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type in WEIGHTED]


def variants(onnx_path: Path) -> dict[str, list[str]]:
    """Ways to quantize, as {description: layers kept in float32}: everything, then the first and
    last layers kept in float32 (the usual sensitive ones: the stem sees raw pixels, the
    classifier makes the answer)."""
    layers = weighted_layers(onnx_path)
    out = {"all layers int8": []}
    if len(layers) > 2:
        out["first and last layers float32"] = [layers[0], layers[-1]]
    return out


def quantize(onnx_path: Path, out: Path, pixels: torch.Tensor, float32_layers: list[str] = ()) -> None:
    """`onnx_path` quantized to int8 (QDQ) into `out`, calibrated on `pixels` (uint8 as served)."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    onnxruntime.set_default_logger_severity(3)  # its graph clean-up warns once per unused constant
    batches = np.ascontiguousarray(pixels.numpy())
    name = _input_name(onnx_path)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter([{name: batches[i : i + 8]} for i in range(0, len(batches), 8)])

        def get_next(self):
            return next(self.left, None)

    quantize_static(
        str(onnx_path),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(float32_layers),
    )


def _input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
