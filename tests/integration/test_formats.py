"""Each model format end to end through a real TorchServe: a TorchScript program and a
torch.export program of the default weights (exported from a converted training checkpoint), and
a small eager model in TorchServe's model-file convention (served by a Python without this
package). This project's checkpoint format is the default model's, served by every other
integration test."""

from __future__ import annotations

import pytest

from tests.byom_fixtures import script
from tests.conftest import IMAGES, labelled_photos
from tests.integration.conftest import METRICS_YAML, build_mar
from tests.test_conversion import tiny_eager
from tsctl.local_server import TorchServe

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_every_format_serves_the_labelled_photos(exported, tmp_path, bare):
    store = tmp_path / "store"
    store.mkdir()
    # a small eager model in TorchServe's convention: model file + plain state dict + index_to_name.json
    tiny = tiny_eager(tmp_path)
    out = script(
        "build_mar.py",
        "--no-onnx",
        "--checkpoint",
        tmp_path / "weights.pth",
        "--model-file",
        tmp_path / "tiny_net.py",
        "--labels",
        tmp_path / "index_to_name.json",
        "--recipe",
        '{"crop_size": 32, "resize_size": 36}',
        "--model-name",
        "fmt_eager",
        "--export-path",
        store,
    )
    assert out.returncode == 0 and tiny is not None, out.stderr
    sources = {"fmt_torchscript": exported["torchscript"], "fmt_export": exported["export"]}
    for name, path in sources.items():
        build_mar(path, store, name, sets=["batchSize=4", "maxBatchDelay=10", "handler.trust_program=true"])
    ts = TorchServe(
        tmp_path / "ts",
        store,
        ",".join(f"{n}.mar" for n in [*sources, "fmt_eager"]),
        python=bare,
        extra_config={"metrics_config": METRICS_YAML},
    )
    ts.start([*sources, "fmt_eager"])
    try:
        resp = ts.post("fmt_eager", data=(IMAGES / "dog1.jpg").read_bytes())
        assert resp.status_code == 200 and {a["label"] for a in resp.json()} == {"red", "green", "blue"}, resp.text
        for model in sources:
            for name, acceptable in labelled_photos().items():
                resp = ts.post(model, data=(IMAGES / name).read_bytes())
                assert resp.status_code == 200, (model, name, resp.text)
                if acceptable:
                    assert resp.json()[0]["label"] in acceptable, (model, name, resp.json()[0])
    finally:
        ts.stop()
