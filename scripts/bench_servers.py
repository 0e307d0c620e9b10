"""The three ways to serve one archive, side by side on one host: TorchServe straight (raw body
and the Open Inference Protocol's binary form), KServe's TorchServe wrapper in front of that same
TorchServe (OIP JSON, the only form it passes), and KServe's own model server on the request
core (OIP binary and JSON). The bundle `make kserve-bundle` writes is what each serves, with
its batchSize and maxBatchDelay; each run is wrk with N clients for --duration seconds on the
bench's 500x375 photos, rounds interleaved, medians over rounds.

    .venv/bin/python scripts/bench_servers.py [--duration 10] [--rounds 2] [--concurrency 1,8,16]

Writes bench_results/servers.md and servers.json. The wrapper's ports are the pod's (8080 and
8081, TorchServe's 8085/8086): nothing else may listen there (make stop).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench import make_images, median_runs, run_wrk  # noqa: E402
from bench_forms import build_form  # noqa: E402
from kserve_bundle import write_bundle  # noqa: E402

from tsctl.kserve_local import KServeServer  # noqa: E402
from tsctl.local_server import LAUNCH, bare_python  # noqa: E402

MODEL = "efficientnet_lite0"
WRAPPER = ROOT / "build" / "kserve-wrapper"  # make kserve-wrapper
RUNTIME = ROOT / "deploy" / "kserve" / "overlays" / "torchserve" / "servingruntime.yaml"
POD_PORTS = (8080, 8081, 8085, 8086)
# path -> (server, request form)
PATHS = {
    "torchserve_raw": ("torchserve", "raw"),
    "torchserve_oip_binary": ("torchserve", "oip_binary"),
    "wrapper_oip_json": ("wrapper", "oip_json"),
    "kserve_oip_binary": ("kserve", "oip_binary"),
    "kserve_oip_json": ("kserve", "oip_json"),
}


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(url: str, what: str, proc=None, timeout: float = 300, body: bytes | None = None) -> float:
    """Seconds until `url` answers 200 (a GET, or a POST of `body`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            answer = requests.get(url, timeout=2) if body is None else requests.post(url, data=body, timeout=30)
            if answer.status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} was not ready within {timeout} s")


def _rss_mib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            total += sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
        except psutil.NoSuchProcess:
            pass
    return round(total / 2**20)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "efficientnet_lite0.pt")
    parser.add_argument("--photos", type=Path, default=ROOT / "samples")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,16")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"of {list(PATHS)}")
    args = parser.parse_args(argv)
    paths = {p: PATHS[p] for p in args.paths.split(",")}
    busy = [p for p in POD_PORTS if _busy(p)]
    if busy:
        print(f"ports {busy} are taken: the wrapper path runs on the pod's ports (make stop)", file=sys.stderr)
        return 2
    if "wrapper_oip_json" in paths and not (WRAPPER / "venv" / "bin" / "python").exists():
        print(f"KServe's wrapper is not built at {WRAPPER}: make kserve-wrapper", file=sys.stderr)
        return 2
    import yaml

    work = args.out / "servers"
    work.mkdir(parents=True, exist_ok=True)
    files = make_images(args.photos, args.out / "images")["500x375"]
    forms = {form: build_form(form, files, work / "forms") for _, form in paths.values()}
    bundle = write_bundle(
        args.checkpoint, MODEL, "1.0", work / "bundle", [], mount=str(work / "bundle" / MODEL / "v1.0")
    )
    threads = str(os.cpu_count() or 1)
    runtime = yaml.safe_load(RUNTIME.read_text())["spec"]["containers"][0]
    env = {e["name"]: e["value"].replace("{{.Labels.serviceEnvelope}}", "kservev2") for e in runtime["env"]}
    env.update(OMP_NUM_THREADS=threads, PROTOCOL_VERSION="v2", TMPDIR=str(work / "tmp"), HOME=str(work))
    env["LOG_LOCATION"] = env["METRICS_LOCATION"] = str(work / "tmp" / "logs")
    (work / "tmp").mkdir(exist_ok=True)
    bare = bare_python(work / "bare")
    ts_args = [a.replace("/mnt/models", str(bundle)) for a in runtime["args"]][1:]
    ts_env = {**os.environ, **env}
    subprocess.run([str(bare), "-c", LAUNCH, *ts_args], cwd=work, env=ts_env, check=True, stdout=subprocess.DEVNULL)
    wrapper = kserve = None
    ready = {}
    try:
        photo = files[0].read_bytes()
        ready["torchserve"] = _wait(f"http://127.0.0.1:8085/predictions/{MODEL}", "TorchServe", body=photo)
        if "wrapper_oip_json" in paths:
            wenv = {**ts_env, "CONFIG_PATH": str(bundle / "config" / "config.properties")}
            log = (work / "wrapper.log").open("w")
            command = [str(WRAPPER / "venv" / "bin" / "python"), "__main__.py"]
            wrapper = subprocess.Popen(command, cwd=WRAPPER / "kserve_wrapper", env=wenv, stdout=log,
                                       stderr=subprocess.STDOUT)  # fmt: skip
            _wait("http://127.0.0.1:8080/v2/health/ready", "KServe's wrapper", wrapper)
        kserve = KServeServer(work / "kserve", bundle, MODEL, env={"OMP_NUM_THREADS": threads,
                              "GOMP_SPINCOUNT": env.get("GOMP_SPINCOUNT", "10000")}).start()  # fmt: skip
        ready["kserve"] = kserve.ready_after_s
        urls = {"torchserve": "http://127.0.0.1:8085", "wrapper": "http://127.0.0.1:8080", "kserve": kserve.url}
        concurrencies = [int(c) for c in args.concurrency.split(",")]
        runs = []
        total = args.rounds * len(paths) * len(concurrencies) * args.duration
        with tqdm(total=total, unit="s", desc="servers") as bar:
            for rnd in range(args.rounds):
                order = list(paths)
                order = order[rnd % len(order) :] + order[: rnd % len(order)]  # each round starts elsewhere
                for c in concurrencies:
                    for name in order:
                        server, form_name = paths[name]
                        form = forms[form_name]
                        bar.set_postfix_str(f"round {rnd + 1}: {name} c={c}")
                        result = run_wrk(form.url(urls[server], MODEL), "none", form.files, c, args.duration, bar,
                                         form.content_type, form.json_sizes)  # fmt: skip
                        runs.append({"path": name, "round": rnd, **result})
        ts_pids = [int(p) for p in subprocess.run(["pgrep", "-f", "ts.model_server|org.pytorch.serve"],
                                                  capture_output=True, text=True).stdout.split()]  # fmt: skip
        memory = {"torchserve_frontend_and_worker": _rss_mib(ts_pids), "kserve": _rss_mib([kserve.pid()])}
    finally:
        if kserve is not None:
            kserve.stop()
        if wrapper is not None:
            wrapper.terminate()
            wrapper.wait(30)
        subprocess.run([str(bare), "-c", LAUNCH, "--stop"], cwd=work, env=ts_env, stdout=subprocess.DEVNULL)
    rows = median_runs(runs, key="path")
    at = {(r["path"], r["concurrency"]): r["throughput"] for r in rows}
    ratios = {}
    for c in concurrencies:
        if ("kserve_oip_binary", c) in at and ("torchserve_raw", c) in at:
            ratios[f"kserve_binary_vs_torchserve_raw_c{c}"] = round(
                at["kserve_oip_binary", c] / at["torchserve_raw", c], 2
            )
        if ("kserve_oip_json", c) in at and ("wrapper_oip_json", c) in at:
            ratios[f"kserve_json_vs_wrapper_json_c{c}"] = round(at["kserve_oip_json", c] / at["wrapper_oip_json", c], 2)
    report = {"rows": rows, "ratios": ratios, "ready_s": ready, "rss_mib": memory,
              "settings": {"duration_s": args.duration, "rounds": args.rounds, "images": "500x375",
                           "batchSize": 8, "maxBatchDelay_ms": 20, "torch_threads": int(threads)}}  # fmt: skip
    (args.out / "servers.json").write_text(json.dumps(report, indent=2))
    (args.out / "servers.md").write_text(markdown(report))
    print((args.out / "servers.md").read_text())
    return 0


def markdown(report: dict) -> str:
    lines = ["| path | clients | req/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- |"]
    for r in sorted(report["rows"], key=lambda r: (r["concurrency"], r["path"])):
        lines.append(f"| {r['path']} | {r['concurrency']} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} | {r['errors']} |")  # fmt: skip
    lines += ["", "| ratio | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in report["ratios"].items()]
    lines += ["", f"ready after start (s): {report['ready_s']}; resident memory after the runs (MiB): "
              f"{report['rss_mib']}", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
