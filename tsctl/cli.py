"""tsctl: TorchServe's REST APIs from the command line, with token authorization handled."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

from tsctl import experiment as experiments
from tsctl import serve as local
from tsctl.client import ApiError, Client
from tsctl.rollout import Gate, Plan, State, rollback, rollout
from tsctl.state_files import checked_name, command_lock


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tsctl", description=__doc__)
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument(
        "--key-file",
        default="key_file.json",
        type=Path,
        help="the key_file.json TorchServe wrote where it started (default: ./key_file.json)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wait", help="wait until MODEL has a ready worker")
    p.add_argument("model")
    p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("predict", help="classify image files; prints the top labels")
    p.add_argument("model")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--version")
    p.add_argument("--json", action="store_true", help="print the raw JSON answers")
    p.add_argument("--grpc", action="store_true", help="use the gRPC inference API instead of REST")
    p.add_argument("--grpc-target", default="127.0.0.1:7070", help="gRPC inference address")
    sub.add_parser("models", help="list registered models")
    p = sub.add_parser("describe", help="describe a model (with the handler's own health)")
    p.add_argument("model")
    p.add_argument("--version")
    p = sub.add_parser("register", help="register an archive (a file name in the model store, or a URL)")
    p.add_argument("url")
    p.add_argument("--model-name")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, help="requests per batch (default: the archive's batchSize)")
    p.add_argument("--max-batch-delay", type=int, help="ms to fill a batch (default: the archive's maxBatchDelay)")
    p = sub.add_parser("scale", help="set the worker count of a model version")
    p.add_argument("model")
    p.add_argument("--version")
    p.add_argument("--min", type=int, required=True, dest="min_worker")
    p.add_argument("--max", type=int, dest="max_worker")
    p = sub.add_parser("set-default", help="make VERSION the default of MODEL")
    p.add_argument("model")
    p.add_argument("version")
    p = sub.add_parser("unregister", help="unregister a model version (the default version if none is given)")
    p.add_argument("model")
    p.add_argument("version", nargs="?")
    p = sub.add_parser("rollout", help="register NEW.mar beside the default, gate it on a golden set, promote, watch")
    p.add_argument("model")
    p.add_argument("mar", type=Path)
    p.add_argument(
        "--golden",
        type=Path,
        required=True,
        help="folder of golden images, run through both versions (e.g. a sample of real traffic)",
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="the server's model store")
    p.add_argument("--workers", type=int, default=1, help="workers for the new version")
    p.add_argument("--min-agreement", type=float, default=0.95, help="share of golden top-1s the new version must keep")
    p.add_argument("--max-errors", type=int, default=0, help="failed golden requests allowed on the new version")
    p.add_argument("--max-p99-ratio", type=float, default=3.0, help="new p99 <= this x old p99 (+ --p99-slack-ms)")
    p.add_argument("--p99-slack-ms", type=float, default=200.0)
    p.add_argument("--watch", type=float, default=60.0, help="seconds to watch the error rate after promotion")
    p.add_argument("--max-error-rate", type=float, default=0.05, help="error rate that triggers an automatic rollback")
    p.add_argument("--grace", type=float, default=30.0, help="seconds before the old version is unregistered")
    p.add_argument(
        "--shadow-pairs",
        type=int,
        default=0,
        help="before promotion, shadow live traffic until this many paired answers (0: no shadow phase)",
    )
    p.add_argument("--shadow-sample", type=float, default=1.0, help="share of live batches shadowed in that phase")
    p.add_argument(
        "--min-shadow-agreement",
        type=float,
        default=0.95,
        help="the 95%% lower bound of live top-1 agreement the candidate must reach",
    )
    p.add_argument("--shadow-timeout", type=float, default=600.0, help="seconds to wait for --shadow-pairs")
    p.add_argument(
        "--metrics-url",
        default="http://127.0.0.1:8082",
        help="TorchServe's metrics address: the watch after promotion counts every client's errors there",
    )
    p.add_argument(
        "--recover", type=float, default=60.0, help="seconds a restore keeps retrying when TorchServe does not answer"
    )
    p = sub.add_parser("rollback", help="make the previous default the default again")
    p.add_argument("model")
    p.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("serve", help="start TorchServe here, serving what it served when it last stopped")
    p.add_argument("archives", nargs="*", type=Path, help="archives (.mar in the model store) of models to serve")
    p.add_argument("--config", type=Path, default=Path("config.properties"), help="TorchServe's config.properties")
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--workers", type=int, default=1, help="workers for a given archive's model")
    p.add_argument("--fresh", action="store_true", help="forget what was served before: only the given archives")
    p.add_argument(
        "--prefer-given",
        action="store_true",
        help="the given archives' versions are their models' defaults, registered beside the saved versions",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for every model to be ready")
    sub.add_parser("stop", help="remember what is served, then stop the TorchServe started here")
    p = sub.add_parser("experiment", help="run a candidate beside the default on live traffic: shadow or split")
    p.add_argument("action", choices=["start", "status", "stop"])
    p.add_argument("model")
    p.add_argument("candidate", nargs="?", type=Path, help="start: the candidate's archive (.mar)")
    p.add_argument("--mode", choices=["shadow", "split"], default="shadow")
    p.add_argument("--sample", type=float, default=0.1, help="shadow: share of live batches the candidate runs on")
    p.add_argument("--share", type=float, default=0.5, help="split: share of requests the candidate answers")
    p.add_argument("--key-header", default="X-User-Id", help="split: the header whose value assigns a request's arm")
    p.add_argument("--model-store", type=Path, default=Path("model_store"), help="the server's model store")
    args = parser.parse_args(argv)
    client = Client(args.inference_url, args.management_url, args.key_file)
    try:
        _check_names(args)
        if args.command not in CHANGES_WHAT_IS_SERVED | {"serve", "stop"}:
            return COMMANDS[args.command](client, args)
        with command_lock(_workdir(client), args.command):  # one at a time: each sees the last one's state
            code = COMMANDS[args.command](client, args)
            if args.command in CHANGES_WHAT_IS_SERVED and (_workdir(client) / ".tsctl" / "config.properties").exists():
                local.remember(client, _workdir(client))  # a restart serves it again (tsctl serve)
        return code
    except KeyboardInterrupt:
        print("tsctl: interrupted", file=sys.stderr)
        return 130
    except local.StartFailed as exc:
        print(f"tsctl: {exc}", file=sys.stderr)
        return 1
    except (ApiError, TimeoutError, FileNotFoundError, ValueError, RuntimeError, requests.RequestException) as exc:
        print(f"tsctl: {exc}", file=sys.stderr)
        return 1


def _check_names(args) -> None:
    """Model names and versions where they enter: what TorchServe and the saved state can hold."""
    for attr, what in (("model", "model name"), ("model_name", "model name"), ("version", "version")):
        value = getattr(args, attr, None)
        if value is not None:
            checked_name(value, what)


def _workdir(client: Client) -> Path:
    """Where the server runs: TorchServe writes key_file.json in the folder it starts in."""
    return client.key_file.resolve().parent


def _wait(client: Client, args) -> int:
    desc = client.wait_ready(args.model, args.timeout)
    print(f"{args.model} v{desc.get('modelVersion')} ready ({len(desc.get('workers', []))} workers)")
    return 0


def _predict(client: Client, args) -> int:
    grpc = None
    if args.grpc:
        from tsctl.grpc_client import GrpcClient

        grpc = GrpcClient(args.grpc_target, args.grpc_target, client.key_file)
    for path in args.files:
        if grpc:
            answer = json.loads(grpc.predict(args.model, path.read_bytes(), args.version))
        else:
            answer = client.predict(args.model, path.read_bytes(), args.version).json()
        if args.json:
            print(json.dumps({"file": str(path), "prediction": answer}))
        else:
            labels = ", ".join(f"{a['label']} ({a['probability']:.2f})" for a in answer)
            print(f"{path}: {labels}")
    return 0


def _models(client: Client, args) -> int:
    print(json.dumps(client.management("GET", "/models").json(), indent=2))
    return 0


def _describe(client: Client, args) -> int:
    path = f"/models/{args.model}" + (f"/{args.version}" if args.version else "")
    print(json.dumps(client.management("GET", path, params={"customized": "true"}).json(), indent=2))
    return 0


def _register(client: Client, args) -> int:
    print(f"registering {args.url} with {args.workers} worker(s): TorchServe answers once they are loaded "
          "(each verifies its backends; logs/model_log.log shows its steps) ...", file=sys.stderr)  # fmt: skip
    print(client.register(args.url, args.workers, args.model_name, args.batch_size, args.max_batch_delay))
    return 0


def _scale(client: Client, args) -> int:
    print(client.scale(args.model, args.version, args.min_worker, args.max_worker))
    return 0


def _set_default(client: Client, args) -> int:
    print(client.set_default(args.model, args.version))
    return 0


def _unregister(client: Client, args) -> int:
    answer = client.unregister(args.model, args.version)
    print(f"{args.model} v{args.version} unregistered" if args.version else answer)
    return 0


def _state(client: Client, model: str) -> State:
    return State(client.key_file.resolve().parent / ".tsctl" / f"{model}.json")


def _rollout(client: Client, args) -> int:
    gate = Gate(args.min_agreement, args.max_errors, args.max_p99_ratio, args.p99_slack_ms)
    plan = Plan(
        args.model,
        args.mar,
        args.golden,
        args.model_store,
        gate,
        args.workers,
        args.watch,
        args.max_error_rate,
        args.grace,
        args.recover,
        args.shadow_pairs,
        args.shadow_sample,
        args.min_shadow_agreement,
        args.shadow_timeout,
        args.metrics_url,
    )
    return rollout(client, plan, _state(client, args.model))


def _rollback(client: Client, args) -> int:
    return rollback(client, args.model, _state(client, args.model), args.workers)


def _serve(client: Client, args) -> int:
    local.serve(args.config, args.model_store, args.archives, _workdir(client), args.workers, args.fresh,
                timeout_s=args.timeout, prefer_given=args.prefer_given)  # fmt: skip
    print(f"TorchServe runs from {_workdir(client)} (logs in {_workdir(client) / 'logs'}/)")
    return 0


def _experiment(client: Client, args) -> int:
    if args.action == "start":
        if args.candidate is None:
            raise ValueError("tsctl experiment start MODEL CANDIDATE.mar: name the candidate's archive")
        experiments.start(client, args.model, args.candidate, args.model_store, args.mode, args.sample, args.share,
                          args.key_header)  # fmt: skip
    elif args.action == "stop":
        experiments.stop(client, args.model, args.model_store)
    else:
        status = experiments.status(client, args.model)
        if status is None:
            print(f"{args.model} runs no experiment (tsctl experiment start {args.model} CANDIDATE.mar starts one)",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(json.dumps(status, indent=2))
    return 0


def _stop(client: Client, args) -> int:
    return 0 if local.stop(_workdir(client)) else 1


COMMANDS = {
    "wait": _wait,
    "predict": _predict,
    "models": _models,
    "describe": _describe,
    "register": _register,
    "scale": _scale,
    "set-default": _set_default,
    "unregister": _unregister,
    "rollout": _rollout,
    "rollback": _rollback,
    "serve": _serve,
    "stop": _stop,
    "experiment": _experiment,
}
CHANGES_WHAT_IS_SERVED = {"register", "scale", "set-default", "unregister", "rollout", "rollback", "experiment"}

if __name__ == "__main__":
    sys.exit(main())
