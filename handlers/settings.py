"""The handler's settings: the `handler:` section of the archive's model-config.yaml (README, "Configuration")."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .model.engine import PRECISIONS, EngineOptions
from .model.graph import MODES

# Optimisations that `disable` can turn off, to compare or to work around a problem; each CPU
# one is on by default because it measured faster at the same answers (docs/PERFORMANCE.md);
# device_decode (CUDA workers only) has not been measured on a GPU yet.
OPTIMIZATIONS = ("jpeg_draft", "torchcodec", "channels_last", "static_padding", "onednn_fusion", "cpu_streams",
                 "device_decode")


@dataclass(frozen=True)
class Settings:
    topk: int = 5  # labels answered per image unless the request asks otherwise
    max_topk: int = 100
    max_image_pixels: int = 50_000_000  # checked from the header, before decoding
    max_body_bytes: int = 24 * 1024 * 1024  # image bytes; TorchServe's max_request_size: 4/3 of this + 1 MiB
    max_images_per_request: int = 64  # images in one KServe v1 or OIP request
    precision: str = "auto"  # auto (float16 autocast on CUDA, float32 on CPU), float32, float16, bfloat16
    graph: str = "auto"  # auto (frozen on CPU in float32, eager otherwise), eager, freeze, compile
    cpu_threads: int = 0  # torch threads per CPU worker; 0 = OMP_NUM_THREADS if set, else one per core
    decode_threads: int = 0  # images of a batch decoded at once; 0 = one per torch thread of the worker
    quantize_int8: bool = False  # CPU only: dynamic int8 quantization of nn.Linear layers
    disable: tuple = ()  # diagnostics: names from OPTIMIZATIONS to turn off

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
            if name == "disable":
                values[name] = _optimizations(value)
                continue
            kind = type(known[name].default)
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"handler setting {name} must be true or false, got {value!r}")
            values[name] = kind(value)
        settings = cls(**values)
        if settings.precision not in PRECISIONS:
            raise ValueError(f"handler setting precision must be one of {PRECISIONS}, got {settings.precision!r}")
        if settings.graph not in MODES:
            raise ValueError(f"handler setting graph must be one of {MODES}, got {settings.graph!r}")
        if settings.cpu_threads < 0 or settings.decode_threads < 0:
            raise ValueError("handler settings cpu_threads and decode_threads must be >= 0 (0: the default)")
        if settings.max_images_per_request < 1:
            raise ValueError("handler setting max_images_per_request must be >= 1")
        if not 1 <= settings.topk <= settings.max_topk:
            raise ValueError(f"handler setting topk must be in 1..max_topk ({settings.max_topk})")
        return settings

    def enabled(self, optimization: str) -> bool:
        return optimization not in self.disable

    def engine_options(self) -> EngineOptions:
        return EngineOptions(
            precision=self.precision, graph=self.graph, int8=self.quantize_int8,
            channels_last=self.enabled("channels_last"), static_padding=self.enabled("static_padding"),
            onednn_fusion=self.enabled("onednn_fusion"), cpu_streams=self.enabled("cpu_streams"),
        )


def _optimizations(value) -> tuple:
    names = [value] if isinstance(value, str) else list(value or [])
    unknown = sorted(set(names) - set(OPTIMIZATIONS))
    if unknown:
        raise ValueError(f"handler setting disable: unknown optimizations {unknown}; known: {list(OPTIMIZATIONS)}")
    return tuple(names)
