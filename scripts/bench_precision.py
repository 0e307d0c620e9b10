#!/usr/bin/env python
"""Each precision the engine can run here (float32, bfloat16, float16, int8) on each backend:
images per second of the engine alone (a full batch of the served crop, interleaved rounds)
beside the top-1 agreement it keeps with the float32 answers on a verification set, measured as
build_mar.py --verify-images measures it. The float32 rows are what the default archive serves.

Alone: .venv/bin/python scripts/bench_precision.py [--verify DIR] (prints a markdown table);
`make bench` runs it too and puts the table in bench_results/results.md.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handlers.model.checkpoint import load_classifier  # noqa: E402
from handlers.model.engine import EngineOptions  # noqa: E402
from handlers.model.reference import FILE as REFERENCE_FILE  # noqa: E402
from handlers.model.reference import ReferenceSet  # noqa: E402
from handlers.model.selection import Candidate, builder  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from modeltools.crops import jpeg, open_photos, random_crops  # noqa: E402
from modeltools.serving_extras import image_files  # noqa: E402
from modeltools.verify import measure  # noqa: E402

CPU = torch.device("cpu")
PRECISIONS = ("float32", "bfloat16", "float16", "int8")


def crops_of(photos: Path, out: Path, count: int = 256, seed: int = 1) -> Path:
    """A verification set where the user gives none: `count` JPEG crops of `photos` in `out`
    (modeltools/crops.py)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(random_crops(open_photos(image_files(photos)), count, seed, rescale=True)):
        (out / f"crop{i:03d}.jpg").write_bytes(jpeg(crop))
    return out


def precision_rows(checkpoint: Path, archive: Path, verify: Path, batch: int, work: Path, rounds: int = 3,
                   seconds: float = 2.0, calibration: Path = ROOT / "samples") -> list[dict]:  # fmt: skip
    """One row per backend and precision that runs here: img/s alone (median of `rounds`
    interleaved timings of `seconds` each) and its measure on `verify`."""
    model, info = load_classifier(checkpoint, CPU)
    reference = ReferenceSet.load(archive / REFERENCE_FILE)
    onnx = archive / "model.onnx"
    build_torch = lambda: load_classifier(checkpoint, CPU, True)[0]  # noqa: E731
    int8 = work / "model.int8.onnx"
    measured, engines = {}, {}
    for precision in PRECISIONS:
        settings = Settings(precision=precision, min_agreement=1e-9)  # measured, never refused here
        record = measure(settings, info.recipe, model, build_torch, verify, reference,
                         onnx if onnx.exists() else None, int8, calibration)  # fmt: skip
        for label, entry in record.candidates.items():
            if "error" in entry:
                continue
            build = builder(info.recipe, CPU, batch, EngineOptions(precision=precision), build_torch, onnx,
                            work / "engines", None, int8 if precision == "int8" else None)  # fmt: skip
            engines[label] = build(Candidate(*label.split("/")))
            measured[label] = {**entry, "images": record.images}
    pixels = torch.randint(0, 256, (batch, 3, *info.recipe.crop_hw), dtype=torch.uint8)
    timings = {label: [] for label in engines}
    for _ in range(rounds):
        for label, engine in engines.items():
            for _ in range(2):
                engine.run(pixels)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                engine.run(pixels)
                n += batch
            timings[label].append(n / (time.perf_counter() - start))
    base = statistics.median(timings.get("torch/float32", [0])) or None
    rows = []
    for label, entry in measured.items():
        img_s = statistics.median(timings[label])
        rows.append({"candidate": label, "img_s": round(img_s, 1),
                     "vs_torch_float32": round(img_s / base, 2) if base else None, **entry})  # fmt: skip
    return rows


def markdown(rows: list[dict], verify_note: str) -> str:
    lines = [
        f"Top-1 agreement with the float32 answers on {verify_note}; engine alone, a full batch.",
        "",
        "| backend/precision | img/s | vs torch/float32 | top-1 agreement | Wilson 95% lower "
        "| largest top-1 prob. change |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["candidate"].split("/")[1] != "float32", -r["img_s"])):
        lines.append(
            f"| {r['candidate']} | {r['img_s']:.0f} | {r['vs_torch_float32']}x | {r['top1_agree']}/{r['images']} "
            f"({r['top1_agreement']:.3f}) | {r['top1_agreement_lower_95']:.3f} | {r['max_top1_prob_change']:.3f} |"
        )
    return "\n".join(lines) + "\n"


PIXEL_SIZES = {"500x375": (500, 375), "1920x1080": (1920, 1080), "12MP": (4000, 3000)}


def pixel_rows(photo: Path, recipe, seconds: float = 2.0) -> list[dict]:
    """Milliseconds per image to decode, resize and crop a JPEG of each size, one thread, on the
    exact path (the default) and the fast one (`pixels: fast`)."""
    from PIL import Image

    from handlers.model.device import single_threaded_torch
    from handlers.request.pixels import image_pixels

    single_threaded_torch()
    rows = []
    for name, size in PIXEL_SIZES.items():
        buf = io.BytesIO()
        Image.open(photo).convert("RGB").resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        row = {"size": name}
        for path, fast in (("exact", False), ("fast", True)):
            image_pixels(data, 10**9, recipe, fast)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                image_pixels(data, 10**9, recipe, fast)
                n += 1
            row[f"{path}_ms"] = round(1000 * (time.perf_counter() - start) / n, 2)
        rows.append(row)
    return rows


def pixel_markdown(rows: list[dict]) -> str:
    lines = ["| JPEG | exact (default) ms | fast ms | exact / fast |", "|---|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['exact_ms']} | {r['fast_ms']} | {r['exact_ms'] / r['fast_ms']:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--mar", type=Path, default=ROOT / "model_store" / "efficientnet_lite0.mar")
    parser.add_argument("--verify", type=Path, help="your verification photos (default: 256 crops of --photos)")
    parser.add_argument("--photos", type=Path, default=ROOT / "samples")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with zipfile.ZipFile(args.mar) as mar:
            mar.extractall(work / "archive")
        verify = args.verify or crops_of(args.photos, work / "verify")
        note = f"{verify}" if args.verify else f"256 crops of {args.photos.name}/ (int8 calibrated on samples/)"
        rows = precision_rows(args.checkpoint, work / "archive", verify, args.batch_size, work)
    print(markdown(rows, note))
    recipe = load_classifier(args.checkpoint, CPU)[1].recipe
    print(pixel_markdown(pixel_rows(image_files(args.photos)[0], recipe)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
