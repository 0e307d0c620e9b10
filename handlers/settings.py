"""The handler's settings: the `handler:` section of the archive's model-config.yaml."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .graph import MODES


@dataclass(frozen=True)
class Settings:
    topk: int = 5  # labels answered per image unless the request asks otherwise
    max_topk: int = 100
    autocast_cuda: bool = True  # float16 autocast on CUDA
    autocast_cpu: bool = False  # bfloat16 autocast on CPU (slower than float32 on most CPUs)
    cuda_dtype: str = "float16"
    max_image_pixels: int = 50_000_000  # checked from the header, before decoding
    max_body_bytes: int = 24 * 1024 * 1024  # image bytes; TorchServe's max_request_size: 4/3 of this + 1 MiB
    jpeg_draft: bool = True  # decode large JPEGs by DCT scaling to just above the resize size
    jpeg_torchcodec: bool = True  # other JPEGs: TorchCodec decodes into a tensor (Pillow's pixels, faster)
    channels_last: bool = True
    cpu_threads: int = 0  # torch intra-op threads per worker on CPU; 0 = torch's default (OMP_NUM_THREADS or all cores)
    decode_threads: int = 0  # images of a batch decoded in parallel; 0 = one thread per core
    warmup: bool = True
    graph: str = "auto"  # auto (frozen on CPU, eager on CUDA), eager, freeze, compile
    chunk_size: int = 0  # images per forward pass; 0: CPU picks the fastest size at warm-up, CUDA the whole batch
    cpu_streams: bool = True  # CPU: a batch of >= 1 image per torch thread runs as single-threaded streams
    cpu_static_padding: bool = True  # CPU: timm's TF-'SAME' convolutions padded statically (handlers/padding.py)
    onednn_fusion: bool = True  # CPU, frozen graphs: oneDNN Graph fusion (TorchScript's LLGA)
    quantize_int8: bool = False  # CPU only: dynamic int8 quantization of nn.Linear layers

    @classmethod
    def from_model_yaml(cls, model_yaml_config: dict | None) -> "Settings":
        """Read `handler:` from model-config.yaml; unknown keys are an error, not a silent no-op."""
        section = dict((model_yaml_config or {}).get("handler") or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(f"unknown handler settings in model-config.yaml: {unknown}; known: {sorted(known)}")
        values = {}
        for name, value in section.items():
            kind = type(known[name].default)
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"handler setting {name} must be true or false, got {value!r}")
            values[name] = kind(value)
        settings = cls(**values)
        if settings.cuda_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"handler setting cuda_dtype must be float16 or bfloat16, got {settings.cuda_dtype!r}")
        if settings.graph not in MODES:
            raise ValueError(f"handler setting graph must be one of {MODES}, got {settings.graph!r}")
        if settings.chunk_size < 0:
            raise ValueError(f"handler setting chunk_size must be >= 0 (0: tuned at warm-up), got {settings.chunk_size}")
        if not 1 <= settings.topk <= settings.max_topk:
            raise ValueError(f"handler setting topk must be in 1..max_topk ({settings.max_topk})")
        return settings

    def autocast_for(self, device: torch.device) -> tuple[bool, torch.dtype]:
        """(enabled, dtype) of autocast on this device."""
        if device.type == "cuda":
            return self.autocast_cuda, getattr(torch, self.cuda_dtype)
        return self.autocast_cpu, torch.bfloat16
