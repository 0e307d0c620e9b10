#!/usr/bin/env python
"""The handler in-process on a CUDA GPU (TorchServe's Context, no Java): throughput and top-1
agreement at batch 1, 8 and 64 for float32, autocast float16, and a stock-style pipeline
(full CPU decode, float32). `--device cpu` runs the same on the CPU (adding dynamic int8
quantization of the Linear layers)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.handler_harness import load_handler, run_batch  # noqa: E402

VARIANTS = {
    "float32": {"autocast_cuda": False, "jpeg_draft": True},
    "autocast float16": {"autocast_cuda": True, "jpeg_draft": True},
    "stock-style (full decode, float32)": {"autocast_cuda": False, "jpeg_draft": False, "channels_last": False,
                                           "graph": "eager"},
}


def measure(handler, bodies: list[bytes], batch: int, seconds: float) -> float:
    items = [{"body": bodies[i % len(bodies)]} for i in range(batch)]
    run_batch(handler, items)  # warm this batch size
    if handler.device.type == "cuda":
        torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run_batch(handler, items)
        n += batch
    if handler.device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "images")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run on a GPU host, or pass --device cpu for a smoke test", file=sys.stderr)
        return 2
    labels = json.loads((args.photos / "labels.json").read_text())
    names = sorted(labels)
    bodies = [(args.photos / n).read_bytes() for n in names]
    gpu = 0 if args.device == "cuda" else None
    rows, reference = [], None
    variants = dict(VARIANTS)
    batches = [int(b) for b in args.batches.split(",")]
    if args.device == "cpu":
        variants["int8 dynamic Linear (CPU)"] = {"quantize_int8": True, "jpeg_draft": True}
    for variant, settings in variants.items():
        handler = load_handler(args.checkpoint, Path(tempfile.mkdtemp()), {"handler": settings},
                               batch_size=max(batches), gpu=gpu)
        top1 = [a.body[0]["label"] for a in run_batch(handler, [{"body": b} for b in bodies])]
        reference = reference or top1
        agree = sum(a == b for a, b in zip(top1, reference))
        acceptable = sum(labels[n] is None or t in labels[n] for n, t in zip(names, top1))
        for batch in batches:
            rate = measure(handler, bodies, batch, args.seconds)
            rows.append({"variant": variant, "batch": batch, "img_s": rate, "top1_agree_with_float32": f"{agree}/{len(names)}",
                         "top1_acceptable": f"{acceptable}/{len(names)}"})
            print(f"{variant:38s} batch {batch:3d}: {rate:8.1f} img/s  top-1 = float32 on {agree}/{len(names)}, "
                  f"acceptable {acceptable}/{len(names)}", flush=True)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {device}, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
