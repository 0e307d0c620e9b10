"""Each model format end to end through a real TorchServe: a converted training checkpoint, a
TorchScript program and a torch.export program of the default weights."""

from __future__ import annotations

import pytest

from tests.byom_fixtures import converted_default, exported, imagenet_labels, script  # noqa: F401
from tests.conftest import IMAGES, labelled_photos
from tests.integration.conftest import METRICS_YAML, build_mar
from tsctl.local_server import TorchServe

pytestmark = pytest.mark.integration


def test_every_format_serves_the_labelled_photos(converted_default, exported, tmp_path, bare):
    store = tmp_path / "store"
    store.mkdir()
    sources = {"fmt_checkpoint": converted_default, "fmt_torchscript": exported["torchscript"],
               "fmt_export": exported["export"]}
    for name, path in sources.items():
        build_mar(path, store, name, sets=["batchSize=4", "maxBatchDelay=10"])
    ts = TorchServe(tmp_path / "ts", store, ",".join(f"{n}.mar" for n in sources), python=bare,
                    extra_config={"metrics_config": METRICS_YAML})
    ts.start(list(sources))
    try:
        for model in sources:
            for name, acceptable in labelled_photos().items():
                resp = ts.post(model, data=(IMAGES / name).read_bytes())
                assert resp.status_code == 200, (model, name, resp.text)
                if acceptable:
                    assert resp.json()[0]["label"] in acceptable, (model, name, resp.json()[0])
    finally:
        ts.stop()

