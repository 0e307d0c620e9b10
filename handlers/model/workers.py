"""Which worker starts replace one that ended: each worker of a registration leaves its pid in
the model's unpacked folder; a start that finds a pid no longer running replaces a dead worker
(a crash, a kill, or one a scale-down ended before a scale-up), and counts as a restart."""

from __future__ import annotations

import os
from pathlib import Path

import psutil


def replaces_a_worker(folder: Path) -> bool:
    """Record this worker; True if a worker recorded before no longer runs (its record is dropped)."""
    records = Path(folder) / "workers"
    records.mkdir(parents=True, exist_ok=True)
    ended = [r for r in records.iterdir() if r.name.isdigit() and not psutil.pid_exists(int(r.name))]
    for record in ended:
        record.unlink(missing_ok=True)
    (records / str(os.getpid())).touch()
    return bool(ended)
