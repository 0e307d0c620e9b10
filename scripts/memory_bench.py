#!/usr/bin/env python
"""Worker memory under a burst of images at the pixel limit: idle RSS, peak RSS during the
burst, and RSS one minute after it, for one worker of the default model on its own TorchServe.

Every accepted format is sent (JPEG, PNG 8- and 16-bit, WebP, GIF, BMP, TIFF), each image just
under `max_image_pixels` (a BMP that size is over `max_body_bytes`: it is refused unread), from `--clients` concurrent clients for `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from build_mar import build, model_config  # noqa: E402

from tsctl.local_server import TorchServe  # noqa: E402

MIB = 1024 * 1024


def photo_like(width: int, height: int) -> Image.Image:
    """Smooth gradients plus a little noise: compresses like a photo, not like flat colour."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    rgb += rng.normal(0, 6, (height, 1, 1)).astype(np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def encodings(pixels: int) -> dict[str, bytes]:
    side = int(pixels ** 0.5) - 1
    img = photo_like(side, side)
    out = {}

    def save(name, image, fmt, **kw):
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()

    save("jpeg", img, "JPEG", quality=90)
    save("png", img, "PNG", compress_level=1)
    gray16 = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    save("png16", Image.fromarray(gray16), "PNG", compress_level=1)
    save("webp", img, "WEBP", quality=80, method=0)
    save("gif", img.convert("P", palette=Image.ADAPTIVE), "GIF")
    save("bmp", img, "BMP")
    save("tiff_deflate", img, "TIFF", compression="tiff_adobe_deflate")
    return out


def worker_rss(server: TorchServe, model: str) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in server.worker_pids(model))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="times every client sends every format")
    parser.add_argument("--after", type=float, default=60, help="seconds after the burst to measure again")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model-config.yaml override for the archive, e.g. handler.max_image_pixels=20000000")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    config = model_config(ROOT / "model-config.yaml", args.set)
    limit = int(config["handler"]["max_image_pixels"])
    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    print(f"encoding images of {limit - 1:,} pixels or just under ...", flush=True)
    bodies = encodings(limit - 1)
    for name, body in bodies.items():
        print(f"  {name}: {len(body) / MIB:.1f} MiB")
    model = "memory_bench"
    build(args.checkpoint, model, "1.0", work / "store", config)
    server = TorchServe(work / "ts", work / "store", f"{model}.mar").start([model])
    try:
        photo = (ROOT.parent / "shared" / "images" / "kitten.jpg")
        server.post(model, data=photo.read_bytes() if photo.exists() else bodies["jpeg"]).raise_for_status()
        time.sleep(2)
        idle = worker_rss(server, model)
        peak, stop = [idle], threading.Event()

        def sample():
            while not stop.is_set():
                peak.append(worker_rss(server, model))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        jobs = [name for _ in range(args.rounds) for name in bodies]
        codes: dict[str, dict[int, int]] = {}
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for name, resp in zip(jobs, pool.map(lambda n: server.post(model, data=bodies[n], timeout=300), jobs)):
                codes.setdefault(name, {}).setdefault(resp.status_code, 0)
                codes[name][resp.status_code] += 1
        burst_s = time.perf_counter() - start
        stop.set()
        sampler.join()
        time.sleep(args.after)
        after = worker_rss(server, model)
        pids = server.worker_pids(model)
    finally:
        server.stop()
    result = {"max_image_pixels": limit, "clients": args.clients, "rounds": args.rounds, "burst_s": round(burst_s, 1),
              "idle_mib": round(idle / MIB), "peak_mib": round(max(peak) / MIB), "after_mib": round(after / MIB),
              "after_s": args.after, "codes": codes, "worker_pids": pids}
    print(json.dumps(result, indent=2))
    print(f"peak = idle + {(max(peak) - idle) / MIB:.0f} MiB (target <= 1024); "
          f"{args.after:.0f} s after the burst: idle + {(after - idle) / MIB:.0f} MiB (target <= 150)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
