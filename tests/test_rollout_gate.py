"""The rollout gate's decisions, as pure functions of two golden runs."""

from tsctl.rollout import Gate, GoldenRun, gate_failures


def run(version, labels, latencies, errors=()):
    return GoldenRun(version, top1=dict(labels), errors=list(errors), latencies_ms=list(latencies))


LABELS = {f"{i}.jpg": f"class {i}" for i in range(20)}


def test_identical_version_passes():
    old = run("1", LABELS, [100] * 40)
    assert gate_failures(old, run("2", LABELS, [110] * 40), Gate()) == []


def test_changed_top1_beyond_the_threshold_is_refused_with_examples():
    changed = {**LABELS, "0.jpg": "other", "1.jpg": "other"}  # 90% agreement
    reasons = gate_failures(run("1", LABELS, [100]), run("2", changed, [100]), Gate(min_agreement=0.95))
    assert len(reasons) == 1 and "top-1 agreement 90%" in reasons[0] and "0.jpg: class 0 -> other" in reasons[0]


def test_errors_and_slow_p99_are_refused():
    old = run("1", LABELS, [100] * 40)
    new = run("2", LABELS, [100] * 39 + [900], errors=["a.jpg: 503"])
    reasons = gate_failures(old, new, Gate(max_p99_ratio=3.0, p99_slack_ms=100))
    assert any("failed golden requests" in r for r in reasons)
    assert any(r.startswith("p99 900 ms > 400 ms") for r in reasons)


def test_missing_answers_count_against_agreement():
    partial = dict(list(LABELS.items())[:10])
    reasons = gate_failures(run("1", LABELS, [1]), run("2", partial, [1], errors=["x"] * 10), Gate())
    assert any("agreement 50%" in r for r in reasons)
