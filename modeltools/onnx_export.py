"""ONNX export, for ONNX Runtime, OpenVINO or Triton: a dynamic batch, the recipe, labels and
version in the model's metadata (the handler does not serve .onnx files)."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import torch
from torch import nn

from .save import metadata

INPUT, OUTPUT = "input", "logits"
logger = logging.getLogger(__name__)
META_KEY = "ts_image_classifier"  # the whole metadata as one JSON value; its parts as keys of their own


def write_onnx(module: nn.Module, example: torch.Tensor, path, input_name: str, output_name: str) -> None:
    """`module` as ONNX with a dynamic batch: torch's TorchScript-based exporter (a second for a
    CNN), or, for what it cannot trace, the torch.export-based one (ten times slower)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=[input_name],
                              output_names=[output_name], opset_version=17,
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})  # fmt: skip
    except Exception as exc:
        logger.info("TorchScript-based ONNX export failed (%s); exporting with torch.export", exc)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=({0: batch},))  # fmt: skip
        program.save(str(path))


def save_onnx(module: nn.Module, example: torch.Tensor, path, info) -> OnnxRunner:
    """Export (batch dimension dynamic), write the metadata, return a runner."""
    import onnx

    write_onnx(module, example, path, INPUT, OUTPUT)
    model = onnx.load(str(path))
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
