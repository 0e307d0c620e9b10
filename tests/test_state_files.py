"""tsctl's state files and lock: two commands at once run one after the other and each sees the
other's state; a write is whole or absent; a damaged file is named with what to do; names and
versions are checked where they enter."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT
from tsctl.rollout import State
from tsctl.state_files import checked_name, command_lock, read_json, write_json


def test_two_commands_at_once_run_one_after_the_other(tmp_path):
    said, order = [], []
    holding = threading.Event()

    def first():
        with command_lock(tmp_path, "rollout m"):
            holding.set()
            order.append("first in")
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    holding.wait(5)
    with command_lock(tmp_path, "set-default m 2", log=said.append):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    assert said and "tsctl rollout m" in said[0] and "waiting for" in said[0]


def test_concurrent_saves_leave_a_whole_file_with_every_key(tmp_path):
    state = State(tmp_path / "m.json")

    def save(i):
        with command_lock(tmp_path, f"save {i}"):
            state.save(**{f"k{i}": i})

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state.load() == {f"k{i}": i for i in range(8)}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_damaged_file_is_named_with_what_to_do(tmp_path):
    (tmp_path / "m.json").write_text('{"previous": ')
    with pytest.raises(ValueError, match=r"m.json is damaged .*delete it"):
        State(tmp_path / "m.json").load()
    write_json(tmp_path / "ok.json", {"a": 1})
    assert read_json(tmp_path / "ok.json", "") == {"a": 1} and read_json(tmp_path / "none.json", "") == {}


@pytest.mark.parametrize("value", ['2.0"', "2\\0", "../x", "", "a b", "é"])
def test_names_and_versions_that_would_corrupt_the_state_are_refused(value):
    with pytest.raises(ValueError, match="is not allowed"):
        checked_name(value, "version")
    assert checked_name("2.0-rc_1") == "2.0-rc_1"


def test_tsctl_refuses_a_bad_version_before_calling_the_server(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tsctl.cli", "--key-file", str(tmp_path / "k.json"), "set-default",
                          "m", '2.0"'], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 1 and "version '2.0\"' is not allowed" in out.stderr


def test_build_mar_refuses_a_version_the_model_store_cannot_hold(default_checkpoint, tmp_path):
    script = str(ROOT / "scripts" / "build_mar.py")
    args = [
        "--checkpoint",
        str(default_checkpoint),
        "--model-name",
        "m",
        "--version",
        "1.0\\",
        "--export-path",
        str(tmp_path),
    ]
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    assert out.returncode == 2 and "is not allowed" in out.stderr and not list(tmp_path.iterdir())
