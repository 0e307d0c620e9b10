"""The handler in-process with TorchServe's Context: labels, order, batching, per-request errors."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import torch
from PIL import Image

from tests.conftest import labelled_photos
from tests.handler_harness import load_handler, run_batch


def test_initialize_puts_model_in_eval_on_cpu_and_warms_up(handler):
    assert handler.initialized and handler.device == torch.device("cpu")
    engine = handler.engine
    assert engine.graph.kind == "frozen"  # the CPU default: batch norm folded, verified against eager
    assert engine.warmup_ms > 0 and engine.autocast is None  # float32 on the CPU by default
    assert not any(p.requires_grad for p in engine.graph.module.parameters())


def test_every_labelled_photo_gets_an_acceptable_top1_in_one_batch(handler, photos):
    names = list(labelled_photos())
    answers = run_batch(handler, [{"body": photos[n]} for n in names])
    for name, answer in zip(names, answers):
        assert answer.status == 200, (name, answer)
        assert len(answer.body) == 5
        probs = [a["probability"] for a in answer.body]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        acceptable = labelled_photos()[name]
        if acceptable is not None:
            assert answer.body[0]["label"] in acceptable, (name, answer.body[0])


def test_answers_keep_request_order(handler, photos):
    order = ["dog1.jpg", "croco.jpg", "dog2.jpg", "croco.jpg", "dog1.jpg"]
    answers = run_batch(handler, [{"data": photos[n]} for n in order])
    assert [a.body[0]["label"] for a in answers] == [labelled_photos()[n][0] for n in order]


def test_batch_answers_equal_single_answers(handler, photos):
    names = ["kitten.jpg", "bus.jpg", "dog.jpg"]
    batched = run_batch(handler, [{"body": photos[n]} for n in names])
    for name, answer in zip(names, batched):
        single = run_batch(handler, [{"body": photos[name]}])[0]
        assert [a["index"] for a in single.body] == [a["index"] for a in answer.body]
        assert single.body[0]["probability"] == pytest.approx(answer.body[0]["probability"], abs=1e-3)


def test_kitten_confidence_matches_the_models_own_recipe(handler, photos):
    # Reference (shared/images/README.md): tiger cat 0.56 with the model's recipe; a wrong
    # mean/std gives a visibly lower confidence. JPEG draft decoding shifts it a little.
    top = run_batch(handler, [{"body": photos["kitten.jpg"]}])[0].body[0]
    assert top["label"] == "tiger cat"
    assert top["probability"] == pytest.approx(0.56, abs=0.06)


def test_multipart_json_base64_and_data_uri_inputs(handler, photos):
    b64 = base64.b64encode(photos["croco.jpg"]).decode()
    items = [
        {"file": photos["croco.jpg"]},  # multipart field with another name
        {"body": {"image": b64}},  # JSON parsed by TorchServe
        {"body": json.dumps({"image": b64}).encode()},  # JSON left as bytes
        {"body": b64.encode()},  # bare base64
        {"body": ("data:image/jpeg;base64," + b64)},  # data URI as text
    ]
    for answer in run_batch(handler, items):
        assert answer.status == 200, answer
        assert answer.body[0]["label"] == "African crocodile"


def test_topk_from_json_and_header(handler, photos):
    b64 = base64.b64encode(photos["dog1.jpg"]).decode()
    answers = run_batch(
        handler,
        [{"body": {"image": b64, "topk": 2}}, {"body": photos["dog1.jpg"]}],
        headers=[{}, {"X-TopK": "3"}],
    )
    assert [len(a.body) for a in answers] == [2, 3]


def test_bad_item_gets_its_own_4xx_and_neighbours_their_labels(handler, photos):
    items = [
        {"body": photos["dog1.jpg"]},
        {"body": b"this is plainly not an image"},
        {"body": photos["dog2.jpg"]},
        {"body": photos["croco.jpg"][:2000]},  # truncated upload
        {"body": b""},
    ]
    answers = run_batch(handler, items)
    assert [a.status for a in answers] == [200, 400, 200, 400, 400]
    assert answers[0].body[0]["label"] == "Labrador retriever"
    assert answers[2].body[0]["label"] == "Brittany spaniel"
    assert answers[1].body["type"] == "not_an_image" and "text" in answers[1].body["message"]
    assert answers[3].body["type"] == "corrupt_image"
    assert answers[4].body["type"] == "empty_body"
    for bad in (answers[1], answers[3], answers[4]):
        assert set(bad.body) == {"code", "type", "message"} and bad.body["code"] == bad.status
        assert bad.phrase == bad.body["message"]  # ASCII messages are their own reason phrase


def test_all_bad_batch_never_reaches_the_model(handler):
    answers = run_batch(handler, [{"body": b"%PDF-1.7 ..."}, {"body": b"<svg xmlns='x'/>"}])
    assert [a.status for a in answers] == [415, 415]


def test_describe_reports_health(handler, photos):
    served = handler.describe_handle()["requests_served"]
    run_batch(handler, [{"body": photos["kitten.jpg"]}, {"body": b"not an image"}])
    health = handler.describe_handle()
    assert health["architecture"] == "timm:tf_efficientnet_lite0"
    assert health["model_version"] == "2.5" and health["checkpoint_version"] == "1.0"  # TorchServe's, the file's
    assert health["device"] == "cpu" and health["dtype"] == "float32" and health["graph"] == "frozen"
    assert health["requests_served"] == served + 1  # answered requests; the bad one is not counted
    # in-process the "worker" is the test process, so only the shape of the start report is checked here
    assert (
        health["ready_after_s"] > 0
        and health["warmup_ms"] > 0
        and set(health["start_s"]) == {"imports", "choose_engine"}
    )
    assert health["torch_threads"] == torch.get_num_threads()
    assert health["static_padding_convs"] == 5  # tf_efficientnet_lite0: the stem and 4 strided depthwise convs


def test_cpu_threads_setting_sets_torchs_thread_count(default_checkpoint, tmp_path):
    before = torch.get_num_threads()
    try:
        h = load_handler(default_checkpoint, tmp_path, config={"handler": {"cpu_threads": 1}})
        assert torch.get_num_threads() == 1 and h.describe_handle()["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_unknown_handler_setting_refuses_to_start(default_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown handler settings"):
        load_handler(default_checkpoint, tmp_path, config={"handler": {"top_k": 3}})


def test_the_default_decodes_with_pillow_alone(handler, photos, torchcodec_calls):
    names = sorted(photos)
    assert all(a.status == 200 for a in run_batch(handler, [{"body": photos[n]} for n in names]))
    assert torchcodec_calls == [] and handler.describe_handle()["pixels"] == "exact"


def test_fast_pixels_decode_jpegs_with_torchcodec_unless_draft_decoding_shrinks_them(
    default_checkpoint, tmp_path, photos, torchcodec_calls
):
    from handlers.model.verification import FILE, VerificationRecord

    with pytest.raises(ValueError, match="no verification record"):  # fast pixels need the archive's evidence
        load_handler(default_checkpoint, tmp_path / "none", config={"handler": {"pixels": "fast"}})
    entry = {"images": 300, "top1_agree": 297, "top1_agreement": 0.99, "passed": True}
    (tmp_path / "fast").mkdir()
    VerificationRecord(300, 0.99, "fast", {"torch/float32": entry}).save(tmp_path / "fast" / FILE)
    fast = load_handler(default_checkpoint, tmp_path / "fast", config={"handler": {"pixels": "fast"}})
    names = sorted(photos)
    assert all(a.status == 200 for a in run_batch(fast, [{"body": photos[n]} for n in names]))
    resize = fast.info.recipe.resize_size
    drafted = {n for n in names if min(d // resize for d in Image.open(io.BytesIO(photos[n])).size) >= 2}
    assert sorted(torchcodec_calls) == sorted(len(photos[n]) for n in names if n not in drafted)
    health = fast.describe_handle()
    assert health["pixels"] == "fast" and health["engine_selection"]["verification"]["top1_agreement"] == 0.99


def test_handler_settings_from_model_config(default_checkpoint, tmp_path, photos, torchcodec_calls):
    settings = {"topk": 1, "diagnostics": {"disable": ["jpeg_draft", "torchcodec"]}}
    h = load_handler(default_checkpoint, tmp_path, config={"handler": settings})
    answer = run_batch(h, [{"body": photos["kitten.jpg"]}])[0]
    assert len(answer.body) == 1 and torchcodec_calls == []  # Pillow decoded it
    # Without draft decoding the kitten matches the float32 reference pipeline: 0.558
    assert answer.body[0]["probability"] == pytest.approx(0.558, abs=0.005)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_autocast_float16_same_labels(default_checkpoint, tmp_path, photos):
    h = load_handler(default_checkpoint, tmp_path, gpu=0)
    assert h.device.type == "cuda" and h.engine.autocast == torch.float16
    names = [n for n, ok in labelled_photos().items() if ok]
    answers = run_batch(h, [{"body": photos[n]} for n in names])
    for name, answer in zip(names, answers):
        assert answer.body[0]["label"] in labelled_photos()[name]


def test_out_of_memory_splits_the_batch_and_still_answers_everything(default_checkpoint, tmp_path, photos):
    h = load_handler(default_checkpoint, tmp_path, config={"handler": {"diagnostics": {"disable": ["cpu_streams"]}}})
    real = h.engine.graph.module

    class MemoryForTwo(torch.nn.Module):
        def forward(self, x):
            if len(x) > 2:
                raise torch.OutOfMemoryError("simulated: batch too large")
            return real(x)

    h.engine.graph.module = MemoryForTwo()  # passes of 4 (CPU_CHUNK) halve once each
    names = ["dog1.jpg", "croco.jpg", "dog2.jpg", "kitten.jpg", "dog1.jpg"]
    answers = run_batch(h, [{"body": photos[n]} for n in names])
    assert [a.body[0]["label"] for a in answers[:3]] == ["Labrador retriever", "African crocodile", "Brittany spaniel"]
    assert answers[4].body == answers[0].body
    assert h.describe_handle()["oom_batch_splits"] == 1  # 5 images: passes of 3 and 2, the 3 split once


def test_handler_metrics_reach_torchserves_metrics_cache(handler, photos, caplog):
    caplog.set_level("INFO", logger="ts.metrics.caching_metric")
    run_batch(handler, [{"body": photos["dog1.jpg"]}, {"body": b"not an image, just text"}])
    handler.reporter.report()  # the top-1 histogram comes from the reporting thread: report now, or it just did
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("top1_probability" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    names = {line.split("[METRICS]")[1].split(".")[0] for line in lines}
    assert {
        "image_classifier_request_seconds",
        "image_classifier_stage_seconds",
        "image_classifier_requests_total",
        "image_classifier_batches_total",
        "image_classifier_batched_requests_total",
        "image_classifier_input_errors_total",
        "image_classifier_top1_probability",
    } <= names
    assert any("input_errors_total" in line and "error_type:not_an_image" in line for line in lines)
    assert any("requests_total" in line and "outcome:client_error" in line for line in lines)
    assert any("requests_total" in line and "protocol:plain,outcome:ok" in line for line in lines)
    seconds = [line for line in lines if line.startswith("[METRICS]image_classifier_request_seconds.Seconds:")]
    assert len(seconds) == 2 and all("#type:HISTOGRAM" in line for line in seconds)
    value = float(seconds[0].split(":", 1)[1].split("|")[0])
    assert 0 < value < 10  # seconds, not milliseconds
    assert any("stage:inference" in line for line in lines) and any("stage:decode" in line for line in lines)
    assert not any("Failed to update metric" in r.getMessage() for r in caplog.records)


def test_decoding_threads_run_torch_single_threaded_and_the_forward_keeps_its_threads(handler, photos):
    # Each decoding thread would otherwise bring its own OpenMP team into the process
    # (handlers/device.py, single_threaded_torch), and libgomp stops spinning when oversubscribed.
    before = torch.get_num_threads()
    answers = run_batch(handler, [{"body": photos[n]} for n in ("dog1.jpg", "bus.jpg", "cat.jpg", "croco.jpg")])
    assert [a.status for a in answers] == [200] * 4
    in_decoders = {f.result() for f in [handler.decoders.submit(torch.get_num_threads) for _ in range(16)]}
    assert in_decoders == {1}
    assert torch.get_num_threads() == before
    assert handler.describe_handle()["torch_threads"] == before


def test_a_fault_of_ours_while_decoding_is_that_requests_logged_500(handler, photos, monkeypatch, caplog):
    import handlers.core.classifier as module

    real = module.image_pixels

    def buggy(data, *args, **kwargs):
        if data == photos["croco.jpg"]:
            raise ZeroDivisionError("a decoder bug")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(module, "image_pixels", buggy)
    items = [
        {"body": photos["dog1.jpg"]},
        {"body": photos["croco.jpg"]},
        {"body": b"not an image"},
        {
            "body": {
                "instances": [
                    base64.b64encode(photos["dog2.jpg"]).decode(),
                    base64.b64encode(photos["croco.jpg"]).decode(),
                ]
            }
        },
    ]
    answers = run_batch(handler, items)
    assert [a.status for a in answers] == [200, 500, 400, 500]
    assert answers[0].body[0]["label"] == "Labrador retriever"
    assert answers[1].body["type"] == "internal_error" and "ZeroDivisionError" in answers[1].body["message"]
    kserve = json.loads(answers[3].body)
    assert kserve["type"] == "internal_error" and kserve["error"].startswith("instance 1 of 2:")
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(logged) == 2 and "decoding" in logged[0].getMessage()


def test_faults_of_ours_while_reading_answering_or_running_stay_per_request(handler, photos, monkeypatch):
    import handlers.core.classifier as module

    real_read, real_response = module.read_request, module.response

    def read(item, header, limits):
        if item.get("body") == b"read me wrong":
            raise RecursionError("a parser bug")
        return real_read(item, header, limits)

    def respond(request, rows, *args):
        if request.topk == 2:
            raise KeyError("an answer bug")
        return real_response(request, rows, *args)

    monkeypatch.setattr(module, "read_request", read)
    monkeypatch.setattr(module, "response", respond)
    items = [{"body": b"read me wrong"}, {"body": photos["dog1.jpg"]}, {"body": photos["dog2.jpg"]}]
    answers = run_batch(handler, items, headers=[{}, {}, {"X-TopK": "2"}])
    assert [(a.status, a.body["type"] if a.status != 200 else None) for a in answers] == [
        (500, "internal_error"),
        (200, None),
        (500, "internal_error"),
    ]
    monkeypatch.setattr(handler.engine, "run", lambda pixels: 1 / 0)
    answers = run_batch(handler, [{"body": photos["dog1.jpg"]}, {"body": b"not an image"}])
    assert [a.status for a in answers] == [500, 400] and "running the model" in answers[0].body["message"]


def test_a_load_that_hangs_writes_its_threads_stacks_to_the_log(default_checkpoint, tmp_path, monkeypatch, capfd):
    # TorchServe kills a worker that does not load within 120 s and logs only that it timed out
    from handlers import image_classifier
    from handlers.core import classifier

    real = classifier.choose_engine

    def stalled(*args, **kwargs):
        time.sleep(1.5)  # past the watchdog below
        return real(*args, **kwargs)

    monkeypatch.setattr(image_classifier, "LOAD_WATCHDOG_S", 0.5)
    monkeypatch.setattr(classifier, "choose_engine", stalled)
    handler = load_handler(default_checkpoint, tmp_path, batch_size=2)
    time.sleep(1)  # the watchdog was cancelled when the load finished: nothing more is written
    err = capfd.readouterr().err
    assert err.count("Timeout (0:00:00.500000)!") == 1 and "in stalled" in err and "in initialize" in err
    assert handler.initialized
