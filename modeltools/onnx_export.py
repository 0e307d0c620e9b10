"""ONNX export, for ONNX Runtime, OpenVINO or Triton: a dynamic batch, the recipe, labels and
version in the model's metadata (the handler does not serve .onnx files)."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from .save import metadata

INPUT, OUTPUT = "input", "logits"
META_KEY = "ts_image_classifier"  # the whole metadata as one JSON value; its parts as keys of their own


def save_onnx(module: nn.Module, example: torch.Tensor, path, info) -> OnnxRunner:
    """Export with torch.onnx (batch dimension dynamic), write the metadata, return a runner."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        module.eval(), (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},)
    )
    model = program.model_proto
    meta = json.loads(metadata(info))
    entries = {META_KEY: json.dumps(meta), **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    del model.metadata_props[:]
    for key, value in entries.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return OnnxRunner(path)


def read_onnx_metadata(path) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[META_KEY])


class OnnxRunner:
    """An ONNX Runtime session called like the model: float32 [N, 3, H, W] -> logits."""

    def __init__(self, path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return torch.from_numpy(logits)
