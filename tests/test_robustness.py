"""Issue: every bad request gets a clear 4xx and never costs its batch neighbours (in-process)."""

from __future__ import annotations

import pytest

from tests.conftest import labelled_photos
from tests.corpus import as_request, bad_cases, edge_case_encodings
from tests.handler_harness import run_batch

ROBUST_PHOTOS = ["dog1.jpg", "croco.jpg", "dog2.jpg"]  # confident photos: encodings must not flip them


@pytest.fixture(scope="module")
def corpus(photos):
    return bad_cases(photos["dog1.jpg"])


def test_each_bad_input_gets_its_typed_4xx_between_two_good_ones(handler, corpus, photos):
    for case in corpus:
        items = [{"body": photos["croco.jpg"]}, as_request(case.body), {"body": photos["dog2.jpg"]}]
        headers = [{}, case.headers, {}]
        good1, bad, good2 = run_batch(handler, items, headers)
        assert (bad.status, bad.body["type"]) == (case.code, case.type), (case.name, bad)
        assert set(bad.body) == {"code", "type", "message"} and len(bad.body["message"]) > 20
        assert good1.status == 200 and good1.body[0]["label"] == "African crocodile", case.name
        assert good2.status == 200 and good2.body[0]["label"] == "Brittany spaniel", case.name


def test_whole_corpus_in_one_batch(handler, corpus, photos):
    items = [as_request(c.body) for c in corpus] + [{"body": photos["dog1.jpg"]}]
    answers = run_batch(handler, items, [c.headers for c in corpus] + [{}])
    assert [a.status for a in answers[:-1]] == [c.code for c in corpus]
    assert answers[-1].body[0]["label"] == "Labrador retriever"


@pytest.mark.parametrize("name", ROBUST_PHOTOS)
def test_edge_case_encodings_classify_like_the_plain_jpeg(handler, photos, name):
    encodings = edge_case_encodings(photos[name])
    answers = run_batch(handler, [{"body": b} for b in encodings.values()])
    expected = labelled_photos()[name][0]
    for enc, answer in zip(encodings, answers):
        assert answer.status == 200, (enc, answer)
        assert answer.body[0]["label"] == expected, (enc, answer.body[0])
    baseline = answers[0].body[0]["probability"]
    for enc, answer in zip(encodings, answers):
        if enc != "palette.png" and enc != "gif":  # 256-colour quantization moves it more
            assert answer.body[0]["probability"] == pytest.approx(baseline, abs=0.05), enc
