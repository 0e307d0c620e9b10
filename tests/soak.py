"""`make soak`: minutes of mixed good and hostile traffic against a real TorchServe serving the
default archive; reports answers by status and type, wrong labels, worker restarts and the
worker's peak RSS, and exits non-zero if a worker restarted or a good request lost its answer.

    .venv/bin/python -m tests.soak --minutes 5 --clients 8 [--hostile 0.3]

Not part of `make test`: it runs for minutes on purpose.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

from tests.conftest import IMAGES, ROOT, labelled_photos
from tests.corpus import bad_cases
from tests.hostile import hostile_cases
from tests.integration.conftest import METRICS_YAML
from tests.integration.test_robustness import send
from tsctl.local_server import TorchServe

MODEL = "efficientnet_lite0"


def traffic(photos: dict[str, bytes]) -> tuple[list, list]:
    """(good, hostile): good = (name, body, label or None); hostile = corpus Cases."""
    good = [(name, body, (labelled_photos()[name] or [None])[0]) for name, body in photos.items()]
    hostile = bad_cases(photos["dog1.jpg"]) + hostile_cases(photos["dog2.jpg"], labelled_photos()["dog2.jpg"][0])
    return good, hostile


def worker_processes(server: TorchServe) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in server.worker_pids(MODEL) if psutil.pid_exists(pid)]


def run(args) -> dict:
    work = args.out
    shutil.rmtree(work, ignore_errors=True)
    store = work / "model_store"
    store.mkdir(parents=True)
    shutil.copy(ROOT / "model_store" / f"{MODEL}.mar", store)
    server = TorchServe(work / "ts", store, f"{MODEL}.mar", extra_config={"metrics_config": METRICS_YAML})
    photos = {name: (IMAGES / name).read_bytes() for name in labelled_photos()}
    good, hostile = traffic(photos)
    server.start([MODEL])
    counts, wrong = collections.Counter(), collections.Counter()
    seen_pids = set(server.worker_pids(MODEL))
    first_pids = set(seen_pids)
    peak = {"rss": sum(p.memory_info().rss for p in worker_processes(server))}
    idle = peak["rss"]
    stop, lock = threading.Event(), threading.Lock()

    def client(seed: int):
        rng = random.Random(seed)
        while not stop.is_set():
            if rng.random() < args.hostile:
                case = rng.choice(hostile)
                resp = send(server, case.body, case.headers)
                kind = "hostile"
            else:
                name, body, label = rng.choice(good)
                resp = send(server, body)
                kind = "good"
            try:
                body_json = resp.json()
            except ValueError:
                body_json = None
            what = body_json.get("type", "") if isinstance(body_json, dict) else ""
            with lock:
                counts[(kind, resp.status_code, what)] += 1
                if kind == "good" and label is not None and (resp.status_code != 200 or body_json[0]["label"] != label):
                    wrong[name] += 1

    def monitor():
        while not stop.is_set():
            try:
                procs = worker_processes(server)
                seen_pids.update(p.pid for p in procs)
                peak["rss"] = max(peak["rss"], sum(p.memory_info().rss for p in procs))
            except Exception:  # a worker between restarts: counted through its new PID
                pass
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    threads.append(threading.Thread(target=monitor, daemon=True))
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        while time.monotonic() - start < args.minutes * 60:
            time.sleep(1)
            elapsed = time.monotonic() - start
            print(f"\r{elapsed:5.0f} s, {sum(counts.values())} answers", end="", file=sys.stderr)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        print(file=sys.stderr)
    finally:
        stop.set()
        server.stop()
    return {
        "minutes": args.minutes,
        "clients": args.clients,
        "hostile_share": args.hostile,
        "answers": [{"traffic": k, "status": s, "type": t, "count": n} for (k, s, t), n in sorted(counts.items())],
        "wrong_good_answers": dict(wrong),
        "worker_restarts": len(seen_pids - first_pids),
        "idle_rss_mib": round(idle / 2**20),
        "peak_rss_mib": round(peak["rss"] / 2**20),
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Soak: {report['minutes']} min, {report['clients']} clients, {report['hostile_share']:.0%} hostile",
        "",
        "| traffic | status | type | answers |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a['traffic']} | {a['status']} | {a['type']} | {a['count']} |" for a in report["answers"]]
    lines += [
        "",
        f"Wrong or missing answers to good requests: {sum(report['wrong_good_answers'].values())} "
        f"{report['wrong_good_answers'] or ''}",
        f"Worker restarts: {report['worker_restarts']}",
        f"Worker RSS: idle {report['idle_rss_mib']} MiB, peak {report['peak_rss_mib']} MiB",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hostile", type=float, default=0.3, help="share of requests drawn from the hostile corpus")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "soak")
    args = parser.parse_args(argv)
    report = run(args)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "soak.md").write_text(text)
    print(text)
    ok = (
        report["worker_restarts"] == 0
        and not report["wrong_good_answers"]
        and not any(a["status"] >= 500 for a in report["answers"])
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
