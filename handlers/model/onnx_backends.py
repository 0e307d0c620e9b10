"""The network run by ONNX Runtime or OpenVINO, from the ONNX file the archive carries.

That file (written by scripts/build_mar.py) takes the uint8 pixels [N, 3, H, W] of the recipe's
crop and normalises them itself, with TF-'SAME' padding already made static, so every backend
is handed the same tensor the torch backend is. Both runtimes are optional: a host without them
serves with torch.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch

INT8_FILE = "model.int8.onnx"  # the archive's quantized copy of model.onnx (modeltools/quantize.py)
# int8: the archive's quantized (QDQ) file, its int8 layers run as int8, the rest in float32
OPENVINO_PRECISION = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int8": "f32"}


def onnxruntime_providers(device: torch.device) -> list | None:
    """ONNX Runtime's execution providers for `device`; None when ONNX Runtime cannot run there."""
    try:
        import onnxruntime
    except ImportError:
        return None
    available = onnxruntime.get_available_providers()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:  # onnxruntime-gpu
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return None


def import_openvino():
    """OpenVINO without its usage telemetry. Importing `openvino` imports its converter, which
    sends an event to Google Analytics from a child process it forks, in every worker at load,
    while the engine's threads run (a fork beside running threads can hang the worker); a server
    should not call home either. With `openvino_telemetry` unimportable, OpenVINO uses its own
    no-op stand-in."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def openvino_precisions(device: torch.device) -> list[str]:
    """The precisions OpenVINO's CPU plugin runs natively here ([] without OpenVINO or off the CPU)."""
    if device.type != "cpu":
        return []
    try:
        openvino = import_openvino()
    except ImportError:
        return []
    capabilities = set(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return [p for p, cap in (("float32", "FP32"), ("bfloat16", "BF16"), ("float16", "FP16")) if cap in capabilities]


class OnnxRuntimeBackend:
    """uint8 [N, 3, H, W] -> float32 logits with ONNX Runtime; one session shared by the streams
    (its run is thread-safe), each stream running its pass with threads / streams intra-op threads."""

    name = "onnxruntime"
    warm_up_runs = 1
    stream_initializer = None

    def __init__(self, path, device: torch.device, threads: int, streams: int, precision: str = "float32"):
        import onnxruntime

        self.precision = precision  # float32, or int8 for the archive's quantized file
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads // streams)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=onnxruntime_providers(device))
        self.input = self.session.get_inputs()[0].name
        self.streams, self.threads = streams, threads

    def run(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        (logits,) = self.session.run(None, {self.input: np.ascontiguousarray(pixels.cpu().numpy())})
        return torch.from_numpy(logits), 0

    def fall_back(self, exc: Exception) -> bool:
        return False

    def describe(self) -> dict:
        return {"providers": self.session.get_providers(), "intra_op_threads": max(1, self.threads // self.streams)}


class OpenVinoBackend:
    """uint8 [N, 3, H, W] -> float32 logits with OpenVINO's CPU plugin at `precision` (its
    INFERENCE_PRECISION_HINT: bf16 runs on AVX-512 BF16 or AMX), one infer request per stream
    thread. Compiled models are cached in `cache_dir`, so a restarted worker loads instead of
    compiling."""

    name = "openvino"
    warm_up_runs = 1
    stream_initializer = None

    def __init__(self, path, precision: str, threads: int, streams: int, cache_dir=None):
        openvino = import_openvino()

        core = openvino.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": streams,
            "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
        }
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.precision, self.streams, self.threads = precision, streams, threads
        self._local = threading.local()

    def run(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer({0: np.ascontiguousarray(pixels.cpu().numpy())})
        return torch.from_numpy(np.array(result[0], dtype=np.float32)), 0

    def fall_back(self, exc: Exception) -> bool:
        return False

    def describe(self) -> dict:
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return {
            "openvino_streams": self.streams,
            "openvino_threads": self.threads,
            "openvino_precision": _type_name(hint),
        }


def _type_name(hint) -> str:
    """OpenVINO's element type as its short name (bf16, f32), not its repr."""
    return hint.to_string() if hasattr(hint, "to_string") else str(hint)
