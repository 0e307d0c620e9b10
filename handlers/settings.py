"""The handler's settings: the `handler:` section of the archive's model-config.yaml (README, "Configuration")."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .experiment.config import ExperimentConfig
from .model.engine import EngineOptions
from .request.request import Limits

# Optimisations that `diagnostics: {disable: [...]}` turns off, to compare them or to work
# around a problem; each is on by default because it measured faster at the same answers
# (docs/PERFORMANCE.md). Not settings a deployment needs.
# "monitoring" (the window statistics and drift scores, handlers/monitoring.py) is not an
# optimisation: it is off-switchable only so that make bench can measure what it costs.
OPTIMIZATIONS = (
    "jpeg_draft",
    "torchcodec",
    "channels_last",
    "static_padding",
    "onednn_fusion",
    "cpu_streams",
    "monitoring",
)


PIXELS = ("exact", "fast")


@dataclass(frozen=True)
class Settings:
    topk: int = 5  # labels answered per image unless the request asks otherwise
    max_topk: int = 100
    max_image_pixels: int = 50_000_000  # checked from the header, before decoding
    max_body_bytes: int = 24 * 1024 * 1024  # image bytes; TorchServe's max_request_size: 4/3 of this + 1 MiB
    max_images_per_request: int = 64  # images in one KServe v1 or OIP request
    backend: str = "auto"  # auto (the fastest verified here), torch, onnxruntime, openvino
    precision: str = "auto"  # auto and float32: float32 answers; bfloat16, float16, int8: measured first
    # reduced precision or fast pixels serve only if their top-1 agrees with the float32 answers on
    # at least this share of the archive's verification set (build_mar.py --verify-images)
    min_agreement: float = 0.99
    pixels: str = "exact"  # exact: timm's eval transform (Pillow); fast: JPEG DCT scaling, torch resize
    graph: str = "auto"  # torch: auto (frozen on CPU in float32, eager otherwise), eager, freeze, compile
    cpu_threads: int = 0  # torch threads per CPU worker; 0 = OMP_NUM_THREADS if set, else one per core
    decode_threads: int = 0  # images of a batch decoded at once; 0 = one per torch thread of the worker
    quantize_int8: bool = False  # CPU only: dynamic int8 quantization of nn.Linear layers
    device_decode: bool = False  # CUDA workers: a batch's JPEGs decoded on the GPU (nvJPEG)
    trust_program: bool = False  # serve a TorchScript / torch.export file (code); build_mar.py --trust-program
    disable: tuple = ()  # from `diagnostics: {disable: [...]}`: names from OPTIMIZATIONS
    experiment: dict | None = None  # an experiment archive's candidate (handlers/experiment/config.py)

    @classmethod
    def from_model_yaml(cls, model_yaml_config: dict | None) -> Settings:
        """Read `handler:` from model-config.yaml; unknown keys and ill-typed values are an
        error, not a silent no-op. Every option is checked here, once."""
        section = dict((model_yaml_config or {}).get("handler") or {})
        diagnostics = section.pop("diagnostics", None) or {}
        experiment = section.pop("experiment", None)
        if experiment is not None:
            ExperimentConfig.from_dict(experiment)  # refused here, with the reason, if it is not one
        known = {f.name: f for f in fields(cls) if f.name not in ("disable", "experiment")}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(
                f"unknown handler settings in model-config.yaml: {unknown}; known: "
                f"{sorted(known) + ['diagnostics', 'experiment']}"
            )
        if not isinstance(diagnostics, dict) or set(diagnostics) - {"disable"}:
            raise ValueError("handler setting diagnostics takes one key, disable: a list of optimisations")
        values = {name: _typed(name, value, type(known[name].default)) for name, value in section.items()}
        settings = cls(**values, disable=_optimizations(diagnostics.get("disable")), experiment=experiment)
        if settings.cpu_threads < 0 or settings.decode_threads < 0:
            raise ValueError("handler settings cpu_threads and decode_threads must be >= 0 (0: the default)")
        if settings.max_images_per_request < 1 or settings.max_image_pixels < 1 or settings.max_body_bytes < 1:
            raise ValueError(
                "handler settings max_images_per_request, max_image_pixels and max_body_bytes must be >= 1"
            )
        if not 1 <= settings.topk <= settings.max_topk:
            raise ValueError(f"handler setting topk must be in 1..max_topk ({settings.max_topk})")
        if not 0.0 < settings.min_agreement <= 1.0:
            raise ValueError(f"handler setting min_agreement must be in (0, 1], got {settings.min_agreement}")
        if settings.pixels not in PIXELS:
            raise ValueError(f"handler setting pixels must be one of {PIXELS}, got {settings.pixels!r}")
        if settings.device_decode and settings.pixels != "fast":
            raise ValueError("handler setting device_decode needs pixels: fast (GPU-decoded pixels are not exact)")
        settings.engine_options()  # precision and graph are checked where they are defined
        return settings

    @property
    def fast_pixels(self) -> bool:
        return self.pixels == "fast"

    @property
    def changes_answers(self) -> bool:
        """Whether these settings serve anything but the float32 answers on exact pixels: then the
        archive must carry the measurement of what that costs (handlers/model/verification.py)."""
        return self.fast_pixels or self.precision not in ("auto", "float32")

    def enabled(self, optimization: str) -> bool:
        return optimization not in self.disable

    def limits(self, labels: int, behind_kserve: bool = False) -> Limits:
        """What one request may hold and ask for, with a model of `labels` classes; behind
        KServe's wrapper, which parses every answer as JSON, no binary outputs."""
        return Limits(
            self.max_body_bytes,
            self.max_images_per_request,
            self.max_image_pixels,
            self.topk,
            min(self.max_topk, labels),
            binary_outputs=not behind_kserve,
        )

    def engine_options(self) -> EngineOptions:
        return EngineOptions(
            backend=self.backend,
            precision=self.precision,
            graph=self.graph,
            int8=self.quantize_int8,
            channels_last=self.enabled("channels_last"),
            static_padding=self.enabled("static_padding"),
            onednn_fusion=self.enabled("onednn_fusion"),
            cpu_streams=self.enabled("cpu_streams"),
        )


def _typed(name: str, value, kind: type):
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"handler setting {name} must be true or false, got {value!r}")
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"handler setting {name} must be {kind.__name__}, got {value!r}") from None


def _optimizations(value) -> tuple:
    names = [value] if isinstance(value, str) else list(value or [])
    unknown = sorted(set(names) - set(OPTIMIZATIONS))
    if unknown:
        raise ValueError(
            f"handler setting diagnostics.disable: unknown optimizations {unknown}; known: {list(OPTIMIZATIONS)}"
        )
    return tuple(names)
