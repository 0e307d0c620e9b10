"""What `make serve` restores and what the model store accepts, without a server: an archive built
again from the same inputs is the same archive; a named archive's version is its model's default
beside the saved ones; a damaged saved state is named with what to do."""

from __future__ import annotations

import json
import zipfile

import pytest

from tsctl import serve
from tsctl.steps import archive_digest, stage_archive


def mar(path, version="1.0", created="05/12/2026 10:00:00", weights=b"w", name="m"):
    model = {"modelName": name, "modelVersion": version, "serializedFile": "m.pt", "handler": "h.py"}
    manifest = {"createdOn": created, "runtime": "python", "archiverVersion": "0.12.0", "model": model}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("m.pt", weights)
        z.writestr("model-config.yaml", "batchSize: 4\n")
    return path


def test_an_archive_built_again_is_the_same_archive_and_another_model_is_refused(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    first = mar(tmp_path / "a.mar")
    again = mar(tmp_path / "b.mar", created="06/12/2026 11:00:00")  # another build time, zip dates too
    assert first.read_bytes() != again.read_bytes() and archive_digest(first) == archive_digest(again)
    assert stage_archive(first, "m", "1.0", store) == ("m-v1.0.mar", True)
    assert stage_archive(again, "m", "1.0", store) == ("m-v1.0.mar", False)
    other = mar(tmp_path / "c.mar", weights=b"retrained")
    with pytest.raises(ValueError, match="exists with other content"):
        stage_archive(other, "m", "1.0", store)


def saved(workdir, models):
    path = serve.state_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"models": models}))


def entry(mar_name, default):
    return {"defaultVersion": default, "marName": mar_name, "minWorkers": 1, "maxWorkers": 1}


def test_a_named_version_of_a_saved_model_is_its_default_beside_the_saved_ones(tmp_path):
    saved(tmp_path, {"m": {"1.0": entry("m.mar", True)}})
    given = mar(tmp_path / "m-v1.1.mar", "1.1")
    said = []
    plain = serve.plan([given], 1, tmp_path, fresh=False, log=said.append)
    assert list(plain["m"]) == ["1.0"] and "is not registered" in said[0]  # the saved state wins, and says so
    said.clear()
    named = serve.plan([given], 1, tmp_path, fresh=False, log=said.append, prefer_given=True)
    assert {v: e["defaultVersion"] for v, e in named["m"].items()} == {"1.0": False, "1.1": True}
    assert named["m"]["1.0"]["marName"] == "m.mar" and "v1.1 (default)" in said[-1] and "v1.0 x1" in said[-1]
    assert list(serve.plan([given], 1, tmp_path, fresh=True, log=said.append)["m"]) == ["1.1"]


def test_a_damaged_saved_state_says_what_to_do(tmp_path):
    serve.state_path(tmp_path).parent.mkdir(parents=True)
    serve.state_path(tmp_path).write_text('{"models": {"m": ')
    with pytest.raises(serve.StartFailed, match="make serve FRESH=1"):
        serve.plan([], 1, tmp_path, fresh=False)
