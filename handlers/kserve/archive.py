"""The archive a KServe server loads: a .mar file, or a folder holding one (KServe's storage
initializer puts the storageUri at /mnt/models: this project's bundle has
model-store/NAME.mar there), or a folder an archive was unpacked into. A .mar is unpacked into a
writable work folder, as TorchServe unpacks it: the storage mount is read-only in a pod."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

MANIFEST = "MAR-INF/MANIFEST.json"


@dataclass(frozen=True)
class Archive:
    folder: Path  # unpacked: the handler's model_dir
    manifest: dict  # MANIFEST.json's "model" section
    config: dict  # model-config.yaml: batchSize, maxBatchDelay, handler settings
    source: Path  # what was named

    @property
    def name(self) -> str:
        return self.manifest["modelName"]

    @property
    def version(self) -> str:
        return str(self.manifest.get("modelVersion") or "")


def find_mar(path: Path, model_name: str | None = None) -> Path | None:
    """`path` itself when it is an archive; else the one archive under it (or the one for
    `model_name`); None for an unpacked folder."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / MANIFEST).is_file():
        return None
    # links followed: KServe's storage code links a local storageUri's files into the mount
    found = sorted(Path(top) / name for top, _, names in os.walk(path, followlinks=True)
                   for name in names if name.endswith(".mar"))  # fmt: skip
    if model_name:
        named = [p for p in found if p.stem == model_name or p.stem.startswith(f"{model_name}-v")]
        found = named or found
    if len(found) != 1:
        what = "no .mar file" if not found else f"{len(found)} .mar files ({', '.join(p.name for p in found[:6])})"
        raise ValueError(f"{path} holds {what}: name the archive to serve, or a folder holding one")
    return found[0]


def open_archive(path: Path, work_dir: Path, model_name: str | None = None) -> Archive:
    """The archive at `path`, unpacked into `work_dir` where it is a .mar (reused when the same
    archive was unpacked there before: a restarted server is ready sooner)."""
    mar = find_mar(path, model_name)
    folder = Path(path)
    if mar is not None:
        stat = mar.stat()
        folder = Path(work_dir) / f"{mar.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if not (folder / MANIFEST).is_file():
            partial = folder.with_name(folder.name + ".partial")
            partial.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(mar) as z:
                for member in z.namelist():
                    if member.startswith("/") or ".." in member.split("/"):
                        raise ValueError(f"{mar}: member {member!r} leaves the archive")
                z.extractall(partial)
            partial.rename(folder)
    manifest = json.loads((folder / MANIFEST).read_text())["model"]
    config_file = folder / "model-config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    return Archive(folder, manifest, config or {}, Path(mar or path))
