import pytest
import torch
import yaml

from handlers.settings import Settings
from tests.conftest import ROOT


def test_defaults_and_shipped_model_config_agree_on_types():
    shipped = yaml.safe_load((ROOT / "model-config.yaml").read_text())
    settings = Settings.from_model_yaml(shipped)
    assert settings.max_body_bytes == Settings().max_body_bytes == 24 * 1024 * 1024


def test_max_body_matches_torchserve_max_request_size():
    props = dict(
        line.split("=", 1)
        for line in (ROOT / "config.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    shipped = Settings.from_model_yaml(yaml.safe_load((ROOT / "model-config.yaml").read_text()))
    # an image at the handler's limit still fits through TorchServe as base64 JSON
    assert int(props["max_request_size"]) == shipped.max_body_bytes * 4 // 3 + 1024 * 1024
    assert props["disable_token_authorization"] == "false"


def test_the_default_serves_float32_answers_on_exact_pixels_everywhere():
    settings = Settings()
    options = settings.engine_options()
    assert options.autocast_dtype(torch.device("cuda", 0)) is None
    assert options.autocast_dtype(torch.device("cpu")) is None
    assert settings.pixels == "exact" and not settings.fast_pixels and not settings.changes_answers
    shipped = Settings.from_model_yaml(yaml.safe_load((ROOT / "model-config.yaml").read_text()))
    assert not shipped.changes_answers


@pytest.mark.parametrize(
    "handler, changes",
    [({"precision": "float32"}, False), ({"precision": "bfloat16"}, True), ({"precision": "int8"}, True),
     ({"pixels": "fast"}, True)],
)  # fmt: skip
def test_settings_that_change_the_answers_are_known(handler, changes):
    assert Settings.from_model_yaml({"handler": handler}).changes_answers is changes


@pytest.mark.parametrize(
    "handler, message",
    [({"min_agreement": 0}, "min_agreement must be in"), ({"min_agreement": 1.5}, "min_agreement must be in"),
     ({"pixels": "quick"}, "pixels must be one of"), ({"device_decode": True}, "device_decode needs pixels: fast"),
     ({"precision": "int4"}, "precision must be one of")],
)  # fmt: skip
def test_fidelity_settings_are_checked(handler, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_model_yaml({"handler": handler})


def test_disable_turns_off_named_optimisations_only():
    s = Settings.from_model_yaml({"handler": {"diagnostics": {"disable": ["cpu_streams", "jpeg_draft"]}}})
    options = s.engine_options()
    assert not options.cpu_streams and options.static_padding and options.channels_last
    assert not s.enabled("jpeg_draft") and s.enabled("torchcodec")


@pytest.mark.parametrize(
    "section",
    [
        {"topk": 0},
        {"quantize_int8": "yes"},
        {"precision": "float8"},
        {"nope": 1},
        {"graph": "jit"},
        {"diagnostics": {"disable": ["speed"]}},
        {"disable": ["cpu_streams"]},
        {"diagnostics": ["x"]},
        {"cpu_threads": -1},
        {"max_topk": "many"},
        {"device_decode": 1},
        {"trust_program": "yes"},
    ],
)
def test_bad_settings_are_refused(section):
    with pytest.raises(ValueError):
        Settings.from_model_yaml({"handler": section})


def test_device_decoding_is_off_and_programs_untrusted_unless_asked():
    assert not Settings().device_decode and not Settings().trust_program
    s = Settings.from_model_yaml({"handler": {"device_decode": True, "pixels": "fast", "trust_program": True}})
    assert s.device_decode and s.trust_program


def test_limits_cap_topk_at_the_models_labels():
    limits = Settings(max_topk=100).limits(labels=10)
    assert (limits.topk, limits.max_topk) == (5, 10)
