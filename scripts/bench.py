#!/usr/bin/env python
"""`make bench`: this handler vs TorchServe's stock image_classifier vs the model alone, in one run.

Both archives hold the same weights and are registered on one TorchServe with the same
batchSize, maxBatchDelay and one worker each; wrk drives the load. Writes results.md,
results.json and latency_throughput.png to the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import psutil
import torch
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_alone import accuracy, model_alone, monitoring_cost, setups  # noqa: E402
from bench_forms import FORMS, build_form  # noqa: E402
from build_mar import archive, model_config  # noqa: E402
from stock_archive import build_stock_mar  # noqa: E402

from handlers.model.checkpoint import load_classifier  # noqa: E402
from tsctl.client import ApiError  # noqa: E402
from tsctl.local_server import TorchServe  # noqa: E402

SIZES = {"500x375": (500, 375), "12MP": (4000, 3000)}
HANDLERS = {"ours": "bench_ours", "stock": "bench_stock", "ours_scaled": "bench_ours_scaled"}
# "ours_scaled": this handler as `make serve CPU_WORKERS=<cores>` runs it on a CPU host (one
# worker per core, one torch thread each). Not the stock handler's registration, so it is only
# compared with the model alone; "ours" and "stock" share one registration.
ALONE_SECONDS = 2  # per model-alone setup per round


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:key=value[,key=value]` -> (NAME, overrides): this handler once more, registered
    beside the others with those model-config.yaml overrides (`handler.cpu_threads=1`)."""
    name, sep, overrides = text.partition(":")
    items = [o for o in overrides.split(",") if o]
    if not sep or not name.isidentifier() or not items or any("=" not in o for o in items):
        raise argparse.ArgumentTypeError(f"--variant expects NAME:key=value[,key=value], got {text!r}")
    if name in HANDLERS:
        raise argparse.ArgumentTypeError(f"--variant name {name!r} is taken by a built-in handler: {list(HANDLERS)}")
    try:
        model_config(ROOT / "model-config.yaml", items)  # unknown or ill-typed settings: refused before any run
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--variant {name}: {exc}") from None
    return name, items


def make_images(photos: Path, out: Path) -> dict[str, list[Path]]:
    """Each real photo, cover-cropped to each benchmark size, as a quality-90 JPEG."""
    sets = {}
    for size_name, (w, h) in SIZES.items():
        folder = out / size_name
        folder.mkdir(parents=True, exist_ok=True)
        sets[size_name] = []
        for photo in sorted(photos.glob("*.jpg")):
            img = Image.open(photo).convert("RGB")
            scale = max(w / img.width, h / img.height)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            path = folder / photo.name
            img.crop((left, top, left + w, top + h)).save(path, quality=90)
            sets[size_name].append(path)
    return sets


def run_wrk(
    url: str,
    token: str,
    files: list[Path],
    concurrency: int,
    duration: int,
    bar: tqdm,
    content_type: str = "application/octet-stream",
    json_sizes: list[int] | None = None,
) -> dict:
    env = {
        **os.environ,
        "BENCH_FILES": ":".join(map(str, files)),
        "BENCH_TOKEN": token,
        "BENCH_CONTENT_TYPE": content_type,
        "BENCH_JSON_SIZES": ":".join(map(str, json_sizes or [])),
    }
    cmd = [
        "wrk",
        "-t",
        str(min(2, concurrency)),
        "-c",
        str(concurrency),
        "-d",
        f"{duration}s",
        "--timeout",
        "60s",
        "-s",
        str(ROOT / "scripts" / "bench.lua"),
        url,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ticker = threading.Thread(target=_tick, args=(proc, bar, duration), daemon=True)
    ticker.start()
    out, _ = proc.communicate()
    ticker.join()
    line = next((row for row in out.splitlines() if row.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    r = json.loads(line.split(" ", 1)[1])
    seconds = r["duration_us"] / 1e6
    return {
        "concurrency": concurrency,
        "requests": r["requests"],
        "throughput": r["requests"] / seconds,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": r["non2xx"] + r["socket_errors"] + r["timeouts"],
    }


def _tick(proc, bar, duration):
    for _ in range(duration):
        if proc.poll() is not None:
            return
        time.sleep(1)
        bar.update(1)


def parse_env(text: str) -> tuple[str, str]:
    """`KEY=VALUE` for TorchServe's environment (its workers inherit it)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--server-env expects KEY=VALUE, got {text!r}")
    return key, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--photos", type=Path, default=ROOT / "samples", help="photos (JPEG) the images are made of")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--duration", type=int, default=15, help="seconds per load run")
    parser.add_argument("--concurrency", default="1,8,16")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of everything; figures are medians over rounds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="workers per model")
    parser.add_argument(
        "--cpu-threads", type=int, default=0, help="this handler's torch threads per worker (0: torch default)"
    )
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"image sizes to run, of {list(SIZES)}")
    parser.add_argument("--handlers", default=",".join(HANDLERS), help=f"handlers to run, of {list(HANDLERS)}")
    parser.add_argument(
        "--scaled-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="workers of ours_scaled, each with cores/N torch threads (default: one per core)",
    )
    parser.add_argument(
        "--scaled-threads",
        type=int,
        default=0,
        help="torch threads of each ours_scaled worker (default 0: cores / --scaled-workers)",
    )
    parser.add_argument(
        "--forms",
        default=",".join(FORMS),
        help=f"request forms timed side by side on 12 MP photos with this handler, of {list(FORMS)} ('' for none)",
    )
    parser.add_argument("--forms-concurrency", type=int, default=8, help="clients of the request-form runs")
    parser.add_argument(
        "--no-comparisons",
        dest="comparisons",
        action="store_false",
        help="skip the side-by-side runs of monitoring off, shadow 10%% and 100%%, split 50/50",
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,...]",
        help="also run this handler with these model-config.yaml overrides, registered as NAME in the "
        "same rounds (repeatable), e.g. threads1:handler.cpu_threads=1",
    )
    parser.add_argument(
        "--server-env",
        type=parse_env,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in TorchServe's environment, so in every worker's (repeatable; make bench passes "
        "make serve's SERVE_OMP_ENV). The model alone runs in this process, with this process's.",
    )
    args = parser.parse_args(argv)
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"--variant names must differ, got {names}")
    if shutil.which("wrk") is None:
        print("make bench needs wrk (sudo apt-get install -y wrk)", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "model_store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir()
    threads = torch.get_num_threads()

    print("building archives and test images ...")
    image_sets = {k: v for k, v in make_images(args.photos, args.out / "images").items() if k in args.sizes.split(",")}
    handlers = {k: v for k, v in HANDLERS.items() if k in args.handlers.split(",")}
    forms = {}
    if "12MP" in image_sets and "ours" in handlers:
        forms = {f: build_form(f, image_sets["12MP"], args.out / "forms") for f in args.forms.split(",") if f}

    def config(cpu_threads: int, overrides=()) -> dict:
        return model_config(
            ROOT / "model-config.yaml",
            [
                f"batchSize={args.batch_size}",
                f"maxBatchDelay={args.max_batch_delay}",
                f"handler.cpu_threads={cpu_threads}",
                *overrides,
            ],
        )

    ours, _ = archive(args.checkpoint, HANDLERS["ours"], "1.0", store, config(args.cpu_threads))
    scaled_threads = args.scaled_threads or max(1, (os.cpu_count() or 1) // args.scaled_workers)
    if "ours_scaled" in handlers:
        archive(args.checkpoint, HANDLERS["ours_scaled"], "1.0", store, config(scaled_threads))
    build_stock_mar(args.checkpoint, HANDLERS["stock"], store, args.batch_size, args.max_batch_delay)
    from bench_precision import crops_of

    verify = crops_of(args.photos, args.out / "verify-crops")  # what a variant that changes answers costs
    for name, overrides in args.variant:
        handlers[name] = f"bench_{name}"
        archive(args.checkpoint, handlers[name], "1.0", store, config(args.cpu_threads, overrides),
                verify_images=verify)  # fmt: skip
    comparisons = {}  # side by side at 500x375, 8 clients: what monitoring and experiments cost
    if "500x375" in image_sets and "ours" in handlers and args.comparisons:
        comparisons = build_comparisons(args, ours, store, config(args.cpu_threads))
        handlers.update({name: model for name, model in comparisons.items() if name != "ours"})
    unpacked = args.out / "unpacked"  # this handler's archive as a worker sees it
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(ours) as mar:
        mar.extractall(unpacked)

    print("top-1 agreement with the float32 reference pipeline ...")
    agreement = accuracy(args.checkpoint, unpacked, args.photos, image_sets, args.out / "engine-cache" / "accuracy")
    print("each backend and precision: speed alone and agreement with the float32 answers ...")
    from bench_precision import pixel_rows, precision_rows

    precision = precision_rows(args.checkpoint, unpacked, verify, args.batch_size, args.out / "precision")
    recipe = load_classifier(args.checkpoint, torch.device("cpu"))[1].recipe
    pixels = pixel_rows(sorted(args.photos.glob("*.jpg"))[0], recipe)
    print("the monitoring's cost per batch ...")
    monitoring = monitoring_cost(args.checkpoint, unpacked, args.batch_size)
    print("preparing the model-alone setups (every float32 backend, and their variants) ...")
    alone_setups = setups(args.checkpoint, unpacked, threads, args.batch_size, args.out / "engine-cache")

    server = TorchServe(
        args.out / "torchserve",
        store,
        ",".join(f"{m}.mar" for m in handlers.values()),
        extra_config={"default_workers_per_model": args.workers},
    )
    server.env.update(args.server_env)
    server.start(list(handlers.values()))
    runs, alone_rounds, form_runs, comparison_runs = [], [], [], []
    try:
        if "ours_scaled" in handlers:
            server.client.management(
                "PUT",
                f"/models/{HANDLERS['ours_scaled']}",
                params={"min_worker": args.scaled_workers, "max_worker": args.scaled_workers, "synchronous": "true"},
            ).raise_for_status()
        restart = worker_restart(server, HANDLERS["ours"]) if "ours" in handlers else None
        # Rounds interleave everything (model alone, each size, each handler), so a slow
        # spell on a shared host hits all of them; each figure is the median over rounds.
        total = args.repeats * (
            (len(image_sets) * len(handlers) * len(concurrencies) + len(forms) + len(comparisons)) * args.duration
            + len(alone_setups) * ALONE_SECONDS
        )
        with tqdm(total=total, unit="s", desc="bench") as bar:
            for rep in range(args.repeats):
                bar.set_postfix_str(f"round {rep + 1}: model alone")
                alone_rounds.append(model_alone(alone_setups, ALONE_SECONDS))
                bar.update(len(alone_setups) * ALONE_SECONDS)
                for size_name, files in image_sets.items():
                    for handler, model in handlers.items():
                        for c in concurrencies:
                            bar.set_postfix_str(f"round {rep + 1}: {size_name} {handler} c={c}")
                            url = f"{server.inference_url}/predictions/{model}"
                            result = run_wrk(url, server.keys.inference, files, c, args.duration, bar)
                            runs.append({"size": size_name, "handler": handler, "round": rep, **result})
                names = list(forms)  # one after another, so the ratios compare like with like; each round
                first = rep % len(names) if names else 0  # starts at another form
                for name in names[first:] + names[:first]:
                    form = forms[name]
                    bar.set_postfix_str(f"round {rep + 1}: 12MP as {name}")
                    result = run_wrk(
                        form.url(server.inference_url, HANDLERS["ours"]),
                        server.keys.inference,
                        form.files,
                        args.forms_concurrency,
                        args.duration,
                        bar,
                        form.content_type,
                        form.json_sizes,
                    )
                    form_runs.append({"form": name, "round": rep, **result})
                for name, model in comparisons.items():
                    bar.set_postfix_str(f"round {rep + 1}: 500x375 {name}")
                    result = run_wrk(f"{server.inference_url}/predictions/{model}", server.keys.inference,
                                     image_sets["500x375"], 8, args.duration, bar)  # fmt: skip
                    comparison_runs.append({"form": name, "round": rep, **result})
        rss = {name: worker_rss_mib(server, model) for name, model in comparisons.items()}  # one model or two
    finally:
        server.stop()

    report = {
        "host": host_info(threads),
        "model_alone_img_s": median_by_key(alone_rounds),
        "runs": median_runs(runs),
        "forms": median_runs(form_runs, key="form"),
        "comparisons": median_runs(comparison_runs, key="form"),
        "worker_rss_mib": rss,
        "monitoring_cost": monitoring,
        "worker_restart": restart,
        "engine_selection": (restart or {}).pop("engine_selection", {}),
        "agreement": agreement,
        "precision": precision,
        "pixel_paths": pixels,
        "raw": {"runs": runs, "form_runs": form_runs, "model_alone_rounds": alone_rounds},
        "settings": {
            "batchSize": args.batch_size,
            "maxBatchDelay": args.max_batch_delay,
            "workers": args.workers,
            "scaled_workers": args.scaled_workers,
            "scaled_threads": scaled_threads,
            "cpu_threads": args.cpu_threads,
            "duration_s": args.duration,
            "rounds": args.repeats,
            "variants": dict(args.variant),
            "server_env": dict(args.server_env),
        },
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    from bench_report import markdown, plot  # noqa: E402

    (args.out / "results.md").write_text(markdown(report))
    if {"ours", "stock"} <= set(handlers) and set(image_sets) == set(SIZES):
        plot(report, args.out / "latency_throughput.png")
    print((args.out / "results.md").read_text())
    return 0


def build_comparisons(args, ours: Path, store: Path, config: dict) -> dict:
    """{name: registered model}: this handler as served, with monitoring off, and as the primary of
    a shadow (10% and 100% of batches) and a 50/50 split with a candidate of the same weights."""
    from modeltools.experiment_archive import combine

    candidate, _ = archive(args.checkpoint, "bench_candidate", "2.0", args.out / "candidate", config)
    off = model_config(ROOT / "model-config.yaml", [f"{k}={v}" for k, v in (("batchSize", args.batch_size),
                       ("maxBatchDelay", args.max_batch_delay), ("handler.cpu_threads", args.cpu_threads))]
                       + ["handler.diagnostics.disable=[monitoring]"])  # fmt: skip
    archive(args.checkpoint, "bench_no_monitoring", "1.0", store, off)
    models = {"ours": HANDLERS["ours"], "no_monitoring": "bench_no_monitoring"}
    for name, mode, sample in (("shadow10", "shadow", 0.1), ("shadow100", "shadow", 1.0), ("split50", "split", 0.1)):
        combine(
            ours, candidate, store / f"bench_{name}.mar", mode, sample=sample, share=0.5, model_name=f"bench_{name}"
        )
        models[name] = f"bench_{name}"
    return models


def worker_rss_mib(server: TorchServe, model: str) -> int:
    """Resident memory of the model's (first) worker process, after its load runs."""
    return round(psutil.Process(server.worker_pids(model)[0]).memory_info().rss / 2**20)


def worker_restart(server: TorchServe, model: str, kills: int = 2) -> dict:
    """A worker killed (SIGKILL) while nothing else runs, `kills` times: the best time from the
    kill to a new worker READY in TorchServe's description, and where the new worker's own
    seconds went (its health's start_s: imports, model load, engine preparation)."""
    times, health = [], {}
    for _ in range(kills):
        pid = server.worker_pids(model)[0]
        start = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            try:  # while no worker can describe the model, TorchServe answers 507 "Worker died."
                desc = server.client.management("GET", f"/models/{model}", params={"customized": "true"}).json()[0]
            except ApiError:
                desc = {"workers": []}
            if any(w["status"] == "READY" and w["pid"] != pid for w in desc["workers"]):
                break
            time.sleep(0.05)
        times.append(time.monotonic() - start)
        raw = desc["customizedMetadata"]
        health = json.loads(raw) if isinstance(raw, str) else raw
        time.sleep(2)
    return {
        "kill_to_ready_s": round(min(times), 2),
        "kills": [round(t, 2) for t in times],
        "process_to_ready_s": health.get("ready_after_s"),
        "start_s": health.get("start_s"),
        "engine_selection": health.get("engine_selection"),
    }


def median_by_key(rounds: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def median_runs(runs: list[dict], key: tuple = ("size", "handler")) -> list[dict]:
    """One row per `key` fields and concurrency: the median of each figure over rounds."""
    key = (key,) if isinstance(key, str) else key
    cells = {}
    for r in runs:
        cells.setdefault(tuple(r[k] for k in key) + (r["concurrency"],), []).append(r)
    out = []
    for cell, rs in cells.items():
        row = {
            **dict(zip(key, cell)),
            "concurrency": cell[-1],
            "rounds": len(rs),
            "requests": sum(r["requests"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
        }
        for figure in ("throughput", "p50_ms", "p90_ms", "p99_ms"):
            row[figure] = statistics.median(r[figure] for r in rs)
        out.append(row)
    return out


def host_info(threads: int) -> dict:
    cpu = next(
        (
            row.split(":", 1)[1].strip()
            for row in Path("/proc/cpuinfo").read_text().splitlines()
            if row.startswith("model name")
        ),
        "unknown",
    )
    # the OpenMP settings the model alone ran with (this process's)
    omp = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__, "omp_env": omp}


if __name__ == "__main__":
    sys.exit(main())
