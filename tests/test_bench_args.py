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


def test_targets_judge_served_throughput_and_the_engine_against_the_fastest_verified_runtime():
    """Ratios from the best run of each handler; the engine as served is compared with the fastest
    runtime called directly whose backend and precision passed verification (an unverified
    bf16 row does not count, however fast)."""
    from bench_report import targets

    def run(size, handler, conc, rps, p99):
        return {"size": size, "handler": handler, "concurrency": conc, "throughput": rps, "p50_ms": p99 / 2,
                "p90_ms": p99 / 1.5, "p99_ms": p99, "errors": 0}  # fmt: skip

    runs = [
        run("500x375", "ours", 8, 180.0, 100),
        run("500x375", "ours", 16, 190.0, 200),
        run("500x375", "stock", 8, 30.0, 400),
        run("500x375", "stock", 16, 29.0, 800),
        run("12MP", "ours", 8, 100.0, 300),
        run("12MP", "ours", 16, 110.0, 500),
        run("12MP", "stock", 8, 10.0, 500),
        run("12MP", "stock", 16, 9.0, 900),
    ]
    report = _report(runs)
    report["model_alone_img_s"] = {
        "eager channels_last batch 4": 100.0,
        "eager contiguous batch 8": 40.0,
        "onnxruntime alone float32": 200.0,
        "openvino alone bf16 LATENCY": 500.0,
        "engine openvino/float32": 210.0,
        "engine as served (onnxruntime/float32)": 190.0,
    }
    report["engine_selection"] = {"candidates": {"torch/float32": {"verified": True},
                                                 "onnxruntime/float32": {"verified": True},
                                                 "openvino/bfloat16": {"verified": False}}}  # fmt: skip
    got = {what: (round(ratio, 3), met) for what, ratio, _goal, met in targets(report)}
    assert got == {
        "12 MP JPEGs: throughput vs stock handler": (11.0, False),
        "500x375 JPEGs: throughput vs stock handler": (6.333, True),
        "engine as served vs the fastest verified runtime alone (onnxruntime alone float32)": (0.95, True),
        "500x375 JPEGs served vs the eager model alone (best memory format and batch)": (1.9, True),
        "500x375 JPEGs served vs the engine as served, alone": (1.0, True),
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


@pytest.mark.slow
def test_model_alone_times_every_backend_and_the_engine_as_served_on_the_same_network(
    default_checkpoint, served_archive, tmp_path
):
    """The yardstick rows (eager, both memory formats, batches 1-16), each runtime called directly,
    the engine on every backend and precision (and with one optimisation off), and the engine as
    served: the float32 ones all compute the same logits."""
    import torch
    from bench_alone import setups as alone_setups

    from handlers.model.checkpoint import read_checkpoint
    from handlers.model.recipe import normalize

    before = torch.get_num_threads()
    try:
        setups = {name: (run, x, batch) for name, run, x, batch in alone_setups(
            default_checkpoint, served_archive, 2, 8, tmp_path)}  # fmt: skip
    finally:
        torch.set_num_threads(before)
    names = list(setups)
    assert [n for n in names if n.startswith("eager contiguous")] == [
        f"eager contiguous batch {b}" for b in (1, 2, 4, 8, 16)
    ]
    for expected in (
        "engine torch/float32",
        "engine torch/float32, run-time padding",
        "engine onnxruntime/float32",
        "engine openvino/float32",
        "engine openvino/float32, one multi-threaded pass",
        "onnxruntime alone float32",
        "openvino alone f32 LATENCY",
        "openvino alone f32 THROUGHPUT",
    ):
        assert expected in names, (expected, names)
    served = [n for n in names if n.startswith("engine as served (")]
    assert len(served) == 1 and served[0].endswith("/float32)") or "bfloat16" in served[0]
    eager, _, _ = setups["eager contiguous batch 8"]
    _, pixels, batch = setups["engine torch/float32"]
    assert batch == 8 and pixels.dtype == torch.uint8 and pixels.shape[0] == 8
    with torch.inference_mode():
        expected = eager(normalize(pixels, read_checkpoint(default_checkpoint)[1].recipe))
    for name in [n for n in names if n.startswith("engine") and "float32" in n]:
        got = setups[name][0](pixels).logits
        torch.testing.assert_close(got, expected, atol=1e-3 * float(expected.abs().max()), rtol=0, msg=name)
    torch_rows = {n: setups[n][0].__self__.describe() for n in names if n.startswith("engine torch/float32")}
    assert torch_rows["engine torch/float32"]["graph"] == "frozen"
    assert torch_rows["engine torch/float32, eager graph"]["graph"] == "eager"
    assert torch_rows["engine torch/float32, run-time padding"]["static_padding_convs"] == 0
    assert torch_rows["engine torch/float32, one multi-threaded pass"]["cpu_streams"] is None
