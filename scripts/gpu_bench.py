#!/usr/bin/env python
"""In-process on a CUDA GPU, no TorchServe or Java: bytes to answers through the handler's own
request path and engine, at several batch sizes, for float32, autocast float16 (JPEGs decoded
on the CPU, and in one call on the device as CUDA workers do) and a stock-style pipeline (full
CPU decode, eager float32), with top-1 agreement against float32 on the labelled photos.
`--device cpu` runs the same on the CPU (adding dynamic int8 Linear layers)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handlers.model.checkpoint import load_classifier  # noqa: E402
from handlers.model.device import single_threaded_torch  # noqa: E402
from handlers.model.engine import Engine, EngineOptions  # noqa: E402
from handlers.request.answers import probabilities, top_k  # noqa: E402
from handlers.request.device_decode import decode_on_device  # noqa: E402
from handlers.request.pixels import image_pixels  # noqa: E402

# name: (engine options, JPEG draft decoding, JPEGs decoded in one call on the device)
VARIANTS = {
    "float32": (EngineOptions(precision="float32"), True, False),
    "autocast float16": (EngineOptions(precision="float16"), True, False),
    "autocast float16, JPEGs decoded on the device": (EngineOptions(precision="float16"), False, True),
    "stock-style (full decode, eager float32)": (
        EngineOptions(precision="float32", graph="eager", channels_last=False),
        False,
        False,
    ),
}


class Pipeline:
    """The handler's path without TorchServe: decode on a thread pool, the engine, top-k."""

    def __init__(
        self,
        checkpoint: Path,
        device: torch.device,
        batch: int,
        options: EngineOptions,
        draft: bool,
        on_device: bool = False,
    ):
        model, self.info = load_classifier(checkpoint, device, options.channels_last)
        self.engine = Engine(model, self.info.recipe, device, batch, options)
        self.device, self.draft, self.on_device = device, draft, on_device
        self.decoders = ThreadPoolExecutor(torch.get_num_threads(), initializer=single_threaded_torch)

    def __call__(self, bodies: list[bytes]) -> list[list[dict]]:
        decoded = (
            decode_on_device(bodies, self.info.recipe, self.device, 10**9) if self.on_device else [None] * len(bodies)
        )
        rest = [i for i, d in enumerate(decoded) if d is None]  # the handler's fallback: the CPU path
        for i, pixels in zip(
            rest, self.decoders.map(lambda i: image_pixels(bodies[i], 10**9, self.info.recipe, draft=self.draft), rest)
        ):
            decoded[i] = pixels.to(self.device)
        pixels = decoded
        return top_k(probabilities(self.engine.run(torch.stack(pixels)).logits), self.info.labels, [1] * len(bodies))


def measure(pipeline: Pipeline, bodies: list[bytes], batch: int, seconds: float) -> float:
    items = [bodies[i % len(bodies)] for i in range(batch)]
    pipeline(items)  # warm this batch size
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pipeline(items)  # top_k copies to the host: each call ends synchronised
        n += batch
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--photos", type=Path, default=ROOT / "samples")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run on a GPU host, or pass --device cpu for a smoke test", file=sys.stderr)
        return 2
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    labels = json.loads((args.photos / "labels.json").read_text())
    names = sorted(labels)
    bodies = [(args.photos / n).read_bytes() for n in names]
    batches = [int(b) for b in args.batches.split(",")]
    variants = dict(VARIANTS)
    if args.device == "cpu":
        variants["int8 dynamic Linear (CPU)"] = (EngineOptions(int8=True), True, False)
    rows, reference = [], None
    for variant, (options, draft, on_device) in variants.items():
        pipeline = Pipeline(args.checkpoint, device, max(batches), options, draft, on_device)
        top1 = [answer[0]["label"] for answer in pipeline(bodies)]
        reference = reference or top1
        agree = sum(a == b for a, b in zip(top1, reference))
        acceptable = sum(labels[n] is None or t in labels[n] for n, t in zip(names, top1))
        for batch in batches:
            rate = measure(pipeline, bodies, batch, args.seconds)
            rows.append(
                {
                    "variant": variant,
                    "batch": batch,
                    "img_s": rate,
                    "top1_agree_with_float32": f"{agree}/{len(names)}",
                    "top1_acceptable": f"{acceptable}/{len(names)}",
                    "engine": pipeline.engine.describe(),
                }
            )
            print(
                f"{variant:42s} batch {batch:3d}: {rate:8.1f} img/s  top-1 = float32 on {agree}/{len(names)}, "
                f"acceptable {acceptable}/{len(names)}",
                flush=True,
            )
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
