"""TorchServe's token-authorization keys, read from the key_file.json it writes at start."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Keys:
    inference: str
    management: str
    api: str


def read_keys(path, wait_s: float = 0.0) -> Keys:
    """Parse key_file.json (waiting up to `wait_s` for TorchServe to write it)."""
    path = Path(path)
    deadline = time.monotonic() + wait_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    doc = json.loads(path.read_text())
    return Keys(
        inference=doc["inference"]["key"],
        management=doc["management"]["key"],
        api=doc["API"]["key"],
    )


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}
