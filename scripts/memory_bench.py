#!/usr/bin/env python
"""Worker memory under a burst of images at the pixel limit: idle RSS, peak RSS during the
burst, and RSS one minute after it, for one worker of the default model on its own TorchServe.

Every accepted format is sent (JPEG, PNG 8- and 16-bit and with alpha, WebP with and without
alpha, GIF, BMP, TIFF), each image just under `max_image_pixels` (a BMP that size is over
`max_body_bytes`: it is refused unread), from `--clients` concurrent clients for `--rounds`
rounds. Before the burst each format is sent once on its own: what one image at the limit
costs. Each `--variant` (the handler with some optimisations disabled) is measured the same way
in the same run, one after another, each on a TorchServe of its own.
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
    side = int(pixels**0.5) - 1
    img = photo_like(side, side)
    out = {}

    def save(name, image, fmt, **kw):
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()

    save("jpeg", img, "JPEG", quality=90)
    save("png", img, "PNG", compress_level=1)
    gray16 = np.asarray(img.convert("L"), dtype=np.uint16) * 257
    save("png16", Image.fromarray(gray16), "PNG", compress_level=1)
    rgba = img.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, side // 8, side // 8))  # a transparent corner: the alpha is kept
    save("png_alpha", rgba, "PNG", compress_level=1)
    save("webp", img, "WEBP", quality=80, method=0)
    save("webp_alpha", rgba, "WEBP", quality=80, method=0)
    save("gif", img.convert("P", palette=Image.ADAPTIVE), "GIF")
    save("bmp", img, "BMP")
    save("tiff_deflate", img, "TIFF", compression="tiff_adobe_deflate")
    return out


def worker_rss(server: TorchServe, model: str) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in server.worker_pids(model))


def measure(config: dict, bodies: dict[str, bytes], args, work: Path) -> dict:
    model = "memory_bench"
    build(args.checkpoint, model, "1.0", work / "store", config)
    server = TorchServe(work / "ts", work / "store", f"{model}.mar").start([model])
    try:
        photo = ROOT / "samples" / "kitten.jpg"
        server.post(model, data=photo.read_bytes() if photo.exists() else bodies["jpeg"]).raise_for_status()
        time.sleep(2)
        idle = worker_rss(server, model)
        peak, stop = [idle], threading.Event()

        def sample():
            while not stop.is_set():
                peak.append(worker_rss(server, model))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        alone = {}
        for name in bodies:  # each format on its own first: what one image costs
            time.sleep(1)
            before, peak[:] = worker_rss(server, model), []
            server.post(model, data=bodies[name], timeout=300)
            time.sleep(0.3)
            alone[name] = round((max(peak, default=before) - before) / MIB)
        time.sleep(1)
        peak[:] = [idle]
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
    return {
        "burst_s": round(burst_s, 1),
        "idle_mib": round(idle / MIB),
        "peak_mib": round(max(peak) / MIB),
        "after_mib": round(after / MIB),
        "alone_mib": alone,
        "codes": codes,
        "worker_pids": pids,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="times every client sends every format")
    parser.add_argument("--after", type=float, default=60, help="seconds after the burst to measure again")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model-config.yaml override for the archive, e.g. handler.max_image_pixels=20000000",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="OPT[,OPT]",
        help="also measure the handler with these optimisations disabled, e.g. torchcodec",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    config = model_config(ROOT / "model-config.yaml", args.set)
    limit = int(config["handler"]["max_image_pixels"])
    print(f"encoding images of {limit - 1:,} pixels or just under ...", flush=True)
    bodies = encodings(limit - 1)
    for name, body in bodies.items():
        print(f"  {name}: {len(body) / MIB:.1f} MiB")
    results = {}
    for variant in ["", *args.variant]:
        name = f"disable: [{variant}]" if variant else "this handler"
        shipped = (config["handler"].get("diagnostics") or {}).get("disable", [])
        disabled = [*shipped, *filter(None, variant.split(","))]
        overrides = [*args.set, f"handler.diagnostics.disable=[{','.join(disabled)}]"]
        print(f"measuring {name} ...", flush=True)
        results[name] = measure(
            model_config(ROOT / "model-config.yaml", overrides),
            bodies,
            args,
            Path(tempfile.mkdtemp(prefix="memory-bench-")),
        )
    summary = {
        "max_image_pixels": limit,
        "clients": args.clients,
        "rounds": args.rounds,
        "after_s": args.after,
        "results": results,
    }
    print(json.dumps(summary, indent=2))
    print(f"\n| | idle | peak | {args.after:.0f} s after the burst | burst time |\n| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(
            f"| {name} | {r['idle_mib']:,} MiB | idle + {r['peak_mib'] - r['idle_mib']:,} MiB "
            f"| idle {r['after_mib'] - r['idle_mib']:+,} MiB | {r['burst_s']} s |"
        )
    ours = results["this handler"]
    print("\none image at the limit, sent alone: worker RSS peak over its RSS before, MiB")
    print("| format | " + " | ".join(results) + " |\n| --- |" + " --- |" * len(results))
    for name in bodies:
        print(f"| {name} | " + " | ".join(f"{r['alone_mib'][name]:,}" for r in results.values()) + " |")
    print(
        f"\nthis handler: peak idle + {ours['peak_mib'] - ours['idle_mib']} MiB (target <= 1024), "
        f"after idle {ours['after_mib'] - ours['idle_mib']:+} MiB (target <= 150), idle {ours['idle_mib']} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
