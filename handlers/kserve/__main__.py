"""Serve an archive with KServe's model server: REST (KServe v1, the Open Inference Protocol, with
binary tensors) on --http_port, OIP gRPC on --grpc_port, Prometheus metrics on the REST port's
/metrics, health at /v2/models/NAME/health.

    python -m handlers.kserve --model_dir /mnt/models [--model_name NAME] [--http_port 8080] [--grpc_port 8081]

--model_dir is a .mar, a folder holding one (a KServe storage mount), or an unpacked archive.
Batching follows the archive's batchSize and maxBatchDelay unless --batch_size or
--max_batch_delay_ms say otherwise. Every option of KServe's ModelServer is accepted too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

# KServe's model server reads its own options from sys.argv when it is imported
from kserve import ModelServer
from kserve import model_server as kserve_server

from .archive import open_archive
from .binding import bind
from .model import ClassifierModel
from .routes import add_routes

logger = logging.getLogger("handlers.kserve")
DEFAULT_NAME = kserve_server.parser.get_default("model_name")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m handlers.kserve", parents=[kserve_server.parser],
                                     conflict_handler="resolve", description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--model_dir", default=os.environ.get("MODEL_DIR", "/mnt/models"),
                        help="a .mar, a folder holding one, or an unpacked archive (default /mnt/models)")  # fmt: skip
    parser.add_argument("--work_dir", default=os.environ.get("WORK_DIR") or tempfile.gettempdir(),
                        help="where a .mar is unpacked (writable; the storage mount is read-only)")  # fmt: skip
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"),
                        help="address REST and gRPC listen on (127.0.0.1: this host only; default: all)")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=None, help="default: the archive's batchSize")
    parser.add_argument("--max_batch_delay_ms", type=float, default=None, help="default: the archive's maxBatchDelay")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    name = None if args.model_name == DEFAULT_NAME else args.model_name
    archive = open_archive(Path(args.model_dir), Path(args.work_dir), name)
    model = ClassifierModel(name or archive.name, archive, args.batch_size, args.max_batch_delay_ms)
    model.load()
    if kserve_server.args.grpc_max_receive_message_length == kserve_server.parser.get_default(
        "grpc_max_receive_message_length"
    ):  # a gRPC request may be as large as a REST one
        kserve_server.args.grpc_max_receive_message_length = max(
            model.max_body_bytes, kserve_server.args.grpc_max_receive_message_length or 0
        )
    add_routes(kserve_server.app, {model.name: model})
    bind(args.host)
    logger.info("serving %s v%s from %s (ready in %.1f s)", model.name, archive.version, archive.source,
                model.ready_after_s)  # fmt: skip
    ModelServer(workers=1).start([model])


if __name__ == "__main__":
    main()
