"""Fixtures shared by unit and integration tests: real photos, the default checkpoint, a handler."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = Path(os.environ.get("TEST_IMAGES", ROOT.parent / "shared" / "images"))
DEFAULT_CHECKPOINT = ROOT / "build" / "efficientnet_lite0.pt"
sys.path.insert(0, str(ROOT))
pytest_plugins = ["tests.byom_fixtures"]  # converted and exported models, built once per session


def labelled_photos() -> dict[str, list[str] | None]:
    """{file name: acceptable top-1 labels, or None for 'any answer'} from ../shared/images."""
    return json.loads((IMAGES / "labels.json").read_text())


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    if not (IMAGES / "labels.json").exists():
        pytest.fail(f"real photos not found at {IMAGES} (set TEST_IMAGES to their folder)")
    return {name: (IMAGES / name).read_bytes() for name in labelled_photos()}


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    """The default EfficientNet-Lite0 checkpoint, built once if `make` has not built it."""
    if not DEFAULT_CHECKPOINT.exists():
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "build_default_checkpoint.py"),
                "--output",
                str(DEFAULT_CHECKPOINT),
            ],
            check=True,
        )
    return DEFAULT_CHECKPOINT


@pytest.fixture(scope="session")
def handler(default_checkpoint, tmp_path_factory):
    """One initialised handler for every test that only reads it: batchSize 8, the default
    settings, archived as version 2.5 (`make mar VERSION=2.5`) from the checkpoint saved as 1.0."""
    from tests.handler_harness import load_handler

    return load_handler(default_checkpoint, tmp_path_factory.mktemp("model"), batch_size=8, version="2.5")


def jpeg_bytes(img, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


@pytest.fixture
def torchcodec_calls(monkeypatch):
    """Counts the images TorchCodec decodes (their byte lengths, in call order), any format."""
    from handlers.request import decoding

    calls = []
    for name in ("decode_jpeg", "decode_png", "decode_webp"):
        real = getattr(decoding, name)
        assert real is not None, "torchcodec is a dependency (setup.cfg)"

        def counted(data, _real=real, **kwargs):
            calls.append(len(data))
            return _real(data, **kwargs)

        monkeypatch.setattr(decoding, name, counted)
    return calls


@pytest.fixture(scope="session")
def served_archive(default_checkpoint, tmp_path_factory) -> Path:
    """The default model archived as `make mar` does (reference photos, ONNX file), unpacked
    as TorchServe unpacks it for its workers."""
    import zipfile

    store = tmp_path_factory.mktemp("served-store")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_mar.py"), "--checkpoint", str(default_checkpoint),
         "--model-name", "served", "--export-path", str(store)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    unpacked = tmp_path_factory.mktemp("served-model")
    with zipfile.ZipFile(store / "served.mar") as mar:
        mar.extractall(unpacked)
    return unpacked
