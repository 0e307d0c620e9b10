"""tsctl's files in the work folder (.tsctl/): written atomically, read with a message that says
what to do when one is damaged, and one lock, so that two tsctl commands that change what is
served run one after the other instead of overwriting each other's state."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import tempfile
from pathlib import Path

# What TorchServe accepts as a model name, and what a version may hold here: it travels inside
# JSON inside Java properties (the model_snapshot), in URLs and in file names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def checked_name(value: str, what: str = "model name") -> str:
    """`value` if it is a valid model name or version, else ValueError saying what is allowed."""
    if not NAME.fullmatch(str(value)):
        raise ValueError(
            f"{what} {value!r} is not allowed: letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return str(value)


def write_json(path: Path, doc) -> None:
    """`doc` as JSON in `path`, atomically: a temporary file of its own beside it, flushed to disk,
    then renamed over it (a reader sees the old file or the new one, never a part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, fix: str) -> dict:
    """The JSON object in `path` ({} when it does not exist); a damaged file is a ValueError that
    names it and says what to do (`fix`)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is damaged ({exc}): {fix}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is damaged (not a JSON object): {fix}")
    return doc


@contextlib.contextmanager
def command_lock(workdir: Path, command: str, log=None):
    """Held while a command changes what is served: a second one waits for it, saying so."""
    log = log or (lambda message: print(message, file=sys.stderr))
    path = Path(workdir) / ".tsctl" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another tsctl command"
            log(f"waiting for {holder} to finish (one command at a time changes what is served) ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        lock.truncate()
        lock.write(f"tsctl {command} (pid {os.getpid()})")
        lock.flush()
        try:
            yield
        finally:
            lock.seek(0)
            lock.truncate()
            fcntl.flock(lock, fcntl.LOCK_UN)
