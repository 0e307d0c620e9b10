"""`make bench` options: --variant (this handler again with model-config overrides, in the same
rounds) and --server-env (TorchServe's environment), and how the report states them."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench import parse_env, parse_variant  # noqa: E402
from bench_report import markdown  # noqa: E402


def test_variant_parses_name_and_overrides():
    assert parse_variant("threads1:handler.cpu_threads=1") == ("threads1", ["handler.cpu_threads=1"])
    assert parse_variant("big:handler.decode_threads=4,handler.diagnostics.disable=[cpu_streams]") == (
        "big",
        ["handler.decode_threads=4", "handler.diagnostics.disable=[cpu_streams]"],
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("handler.cpu_threads=1", "expects NAME:key=value"),  # no name
        ("t1:", "expects NAME:key=value"),  # no overrides
        ("t-1:handler.cpu_threads=1", "expects NAME:key=value"),  # not a usable name
        ("t1:handler.cpu_threads", "expects NAME:key=value"),  # no value
        ("stock:handler.cpu_threads=1", "taken by a built-in handler"),
        ("t1:handler.cpu_thread=1", "unknown handler settings"),  # typo: refused before any run
        ("t1:handler.quantize_int8=maybe", "must be true or false"),
        ("t1:handler.diagnostics.disable=[speed]", "unknown optimizations"),
    ],
)
def test_bad_variants_are_refused_with_the_reason(text, fragment):
    with pytest.raises(argparse.ArgumentTypeError, match=fragment):
        parse_variant(text)


RUN = {"size": "12MP", "concurrency": 16, "throughput": 30.0, "p50_ms": 500, "p90_ms": 550, "p99_ms": 640, "errors": 0}


def _report(runs: list[dict], **settings) -> dict:
    """A results.json of one 12 MP load run per handler, as scripts/bench.py writes it."""
    return {
        "host": {"cpu": "x", "cores": 2, "torch": "2", "torch_threads": 2},
        "settings": {"batchSize": 8, "maxBatchDelay": 20, "workers": 1, "duration_s": 10, "rounds": 3, **settings},
        "runs": runs,
        "model_alone_img_s": {"eager contiguous batch 8": 30.0},
        "agreement": [
            {
                "size": "12MP",
                "photo": "a.jpg",
                "reference": "cat",
                "served": "cat",
                "same_top1": True,
                "prob_shift": 0.01,
            }
        ],
    }


def test_report_names_each_variant_and_its_rows():
    report = _report(
        [{**RUN, "handler": "ours"}, {**RUN, "handler": "threads1", "throughput": 25.5}],
        variants={"threads1": ["handler.cpu_threads=1"]},
    )
    text = markdown(report)
    assert "threads1: this handler again with handler.cpu_threads=1." in text
    assert "| 12MP | threads1 | 16 | 25.5 |" in text


def test_report_mentions_ours_scaled_only_when_it_ran():
    report = _report([{**RUN, "handler": "ours"}], scaled_workers=2, scaled_threads=1)
    assert "ours_scaled" not in markdown(report)
    report["runs"].append({**RUN, "handler": "ours_scaled"})
    assert (
        "ours_scaled: this handler again, 2 workers x 1 torch threads (`make serve CPU_WORKERS=2 CPU_THREADS=1`)"
        in markdown(report)
    )


def test_targets_judge_the_issue_yardstick_and_the_stricter_one_apart():
    """Ratios from the best run of each handler; the issue's 0.75x is against the eager model
    at its best format and batch, the stricter rows against the fastest setup timed."""
    from bench_report import targets

    def run(size, handler, conc, rps, p99):
        return {
            "size": size,
            "handler": handler,
            "concurrency": conc,
            "throughput": rps,
            "p50_ms": p99 / 2,
            "p90_ms": p99 / 1.5,
            "p99_ms": p99,
            "errors": 0,
        }

    runs = [
        run("500x375", "ours", 8, 80.0, 100),
        run("500x375", "ours", 16, 90.0, 200),
        run("500x375", "stock", 8, 30.0, 400),
        run("500x375", "stock", 16, 29.0, 800),
        run("500x375", "ours_scaled", 8, 110.0, 90),
        run("500x375", "ours_scaled", 16, 100.0, 180),
        run("12MP", "ours", 8, 40.0, 300),
        run("12MP", "ours", 16, 44.0, 500),
        run("12MP", "stock", 8, 10.0, 500),
        run("12MP", "stock", 16, 9.0, 900),
    ]
    report = _report(runs, scaled_workers=2, scaled_threads=2)
    report["model_alone_img_s"] = {
        "eager channels_last batch 4": 100.0,
        "eager contiguous batch 8": 40.0,
        "engine as served (batch 8)": 150.0,
    }
    got = {what: (round(ratio, 3), met) for what, ratio, _goal, met in targets(report)}
    assert got == {
        "12 MP JPEGs: throughput vs stock handler": (4.4, False),
        "500x375 JPEGs: throughput vs stock handler": (3.0, True),
        "500x375 JPEGs: throughput vs model alone (eager, best memory format and batch)": (0.9, True),
        "stricter: 500x375 JPEGs vs the fastest model alone timed (graph, format, batch or streams)": (0.6, False),
        "stricter: 500x375 JPEGs, 2 workers x 2 threads, vs the fastest model alone timed": (0.733, False),
        "500x375: p99 latency at 8 clients vs stock": (0.25, True),
        "12MP: p99 latency at 8 clients vs stock": (0.6, False),
    }


def test_two_variants_with_one_name_are_refused():
    from bench import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--variant", "a:handler.cpu_threads=1", "--variant", "a:handler.cpu_threads=2"])
    assert exit_info.value.code == 2


def test_server_env_parses_and_refuses_what_is_not_key_value():
    assert parse_env("GOMP_SPINCOUNT=10000") == ("GOMP_SPINCOUNT", "10000")
    assert parse_env("EMPTY=") == ("EMPTY", "")
    for bad in ("GOMP_SPINCOUNT", "=1", "A B=1"):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            parse_env(bad)


def test_report_states_the_openmp_environment_of_the_model_alone_and_of_the_workers():
    report = _report([{**RUN, "handler": "ours"}], server_env={"GOMP_SPINCOUNT": "10000"})
    assert (
        "OpenMP: the model alone with libgomp's defaults, TorchServe's workers with GOMP_SPINCOUNT=10000."
        in markdown(report)
    )
    report["host"]["omp_env"] = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "the model alone with OMP_WAIT_POLICY=PASSIVE," in markdown(report)


def test_model_alone_times_the_eager_model_and_the_handlers_engine_on_the_same_network(default_checkpoint):
    """The yardstick rows (eager, both memory formats, batches 1-16) and the engine rows (as
    served, and with one load-time rewrite or the streams off) all compute the same logits."""
    import torch
    from bench import model_alone_setups

    from handlers.model.checkpoint import read_checkpoint
    from handlers.model.recipe import normalize

    before = torch.get_num_threads()
    try:
        setups = {name: (run, x, batch) for name, run, x, batch in model_alone_setups(default_checkpoint, 2, 8)}
    finally:
        torch.set_num_threads(before)
    assert [n for n in setups if n.startswith("eager contiguous")] == [
        f"eager contiguous batch {b}" for b in (1, 2, 4, 8, 16)
    ]
    engines = [
        f"engine{name} (batch 8)"
        for name in (
            " as served",
            ", eager graph",
            ", no oneDNN fusion",
            ", run-time padding",
            ", one multi-threaded pass",
        )
    ]
    assert [n for n in setups if n.startswith("engine")] == engines
    eager, _, _ = setups["eager contiguous batch 8"]
    run, pixels, batch = setups[engines[0]]
    assert batch == 8 and pixels.dtype == torch.uint8 and pixels.shape[0] == 8
    with torch.inference_mode():
        expected = eager(normalize(pixels, read_checkpoint(default_checkpoint)[1].recipe))
    for name in engines:
        got = setups[name][0](pixels).logits
        torch.testing.assert_close(got, expected, atol=1e-3 * float(expected.abs().max()), rtol=0, msg=name)
    described = [setups[name][0].__self__.describe() for name in engines]
    assert [d["graph"] for d in described] == ["frozen", "eager", "frozen", "frozen", "frozen"]
    assert [d["static_padding_convs"] for d in described] == [5, 5, 5, 0, 5]
    assert [d["cpu_streams"] for d in described] == [2, 2, 2, 2, None]
