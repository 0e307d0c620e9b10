"""The shipped log4j2.xml: well-formed (a malformed file stalls TorchServe's start with no
message) and quiet per request while keeping the access log and errors."""

from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]


def loggers() -> dict[str, str]:
    tree = ElementTree.parse(ROOT / "tsctl" / "log4j2.xml")
    return {el.get("name"): el.get("level") for el in tree.getroot().iter("Logger")}


def test_log_config_parses_and_keeps_access_log_and_frontend_info():
    levels = loggers()
    assert levels["ACCESS_LOG"] == "info" and levels["org.pytorch.serve"] == "info"


def test_per_request_frontend_lines_are_off():
    levels = loggers()
    assert levels["org.pytorch.serve.wlm.BatchAggregator"] == "warn"
    assert levels["org.pytorch.serve.job"] == "warn"


def test_make_serve_and_local_server_use_it():
    from tsctl import serve
    from tsctl.local_server import LOG_CONFIG

    assert "$(TSCTL) serve" in (ROOT / "Makefile").read_text()  # make serve starts TorchServe through tsctl serve
    assert serve.LOG_CONFIG is LOG_CONFIG
    assert LOG_CONFIG == ROOT / "tsctl" / "log4j2.xml" and LOG_CONFIG.exists()  # package data, not the checkout
