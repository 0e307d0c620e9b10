"""The request core as a KServe Model: loaded from an archive, answering through the batcher.

KServe's gRPC server hands `predict` an InferRequest: it is written back into the Open
Inference Protocol's binary form (its JSON and its tensors' bytes) and read by the core as
TorchServe's handler reads a REST request, so both servers refuse and answer alike. REST bodies
reach the core unparsed (handlers/kserve/routes.py)."""

from __future__ import annotations

import faulthandler
import json
import struct
import time

import numpy as np
import torch
from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

from ..core.classifier import Classifier
from ..core.exchange import Answer, Item
from ..request.errors import RequestError, bad_request
from ..request.oip import DATATYPES
from ..request.protocols import BINARY_HEADER
from ..settings import Settings
from .archive import Archive
from .batcher import Batcher
from .metrics import PrometheusMetrics

_NUMPY = {"probability": np.float32, "index": np.int64}
LOAD_WATCHDOG_S = 60.0


class ClassifierModel(Model):
    def __init__(self, name: str, archive: Archive, batch_size: int | None = None, delay_ms: float | None = None):
        super().__init__(name)
        self.archive = archive
        self.batch_size = int(batch_size or archive.config.get("batchSize") or 1)
        self.delay_ms = float(delay_ms if delay_ms is not None else archive.config.get("maxBatchDelay") or 0)
        self.core = self.batcher = None
        self.ready_after_s = None

    def load(self) -> bool:
        start = time.perf_counter()
        a = self.archive
        # a load still running after this long writes every thread's stack to stderr, then goes on
        faulthandler.dump_traceback_later(LOAD_WATCHDOG_S)
        try:
            self._load(a)
        finally:
            faulthandler.cancel_dump_traceback_later()
        self.ready_after_s = round(time.perf_counter() - start, 2)
        self.ready = True
        return True

    def _load(self, a: Archive) -> None:
        self.core = Classifier(a.folder, a.manifest["serializedFile"], Settings.from_model_yaml(a.config),
                               model_name=self.name, version=a.version, batch_size=self.batch_size,
                               gpu_id=0 if torch.cuda.is_available() else None)  # fmt: skip
        self.core.metrics = PrometheusMetrics(self.name)
        self.batcher = Batcher(self.core.handle, self.batch_size, self.delay_ms / 1000)

    @property
    def max_body_bytes(self) -> int:
        """A request's body is refused past this size, before it is parsed: an image at the
        settings' limit in base64 (4/3 of it), and 1 MiB of JSON around it."""
        return self.core.settings.max_body_bytes * 4 // 3 + (1 << 20)

    async def answer(self, item: Item) -> Answer:
        return await self.batcher.answer(item)

    async def predict(self, payload, headers=None, response_headers=None):
        """KServe's own decoding handed us the request: an InferRequest (gRPC), or a parsed v1 body."""
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        if not isinstance(payload, InferRequest):
            answer = await self.answer(Item(payload, headers))
            _raise_unless_ok(answer)
            return answer.body
        try:
            body, json_size = binary_body(payload)
        except RequestError as err:
            raise _grpc_error(err.answered_in("oip")) from None
        answer = await self.answer(Item(body, {**headers, BINARY_HEADER: str(json_size)}))
        _raise_unless_ok(answer)
        return infer_response(answer, self.name, payload.id)

    def get_input_types(self) -> list[dict]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": name, "datatype": datatype, "shape": [-1, -1]} for name, datatype in DATATYPES.items()]

    def describe(self) -> dict:
        return {
            **self.core.describe(),
            "server": "kserve",
            "batch_size": self.batch_size,
            "max_batch_delay_ms": self.delay_ms,
            "batches": self.batcher.batches,
            "ready_after_s": self.ready_after_s,
        }


def binary_body(request: InferRequest) -> tuple[bytes, int]:
    """An InferRequest -> the Open Inference Protocol's binary body (JSON, then each input's
    bytes) and the JSON's length."""
    doc, chunks = {"inputs": []}, []
    if request.id:
        doc["id"] = request.id
    if request.parameters:
        doc["parameters"] = _plain(request.parameters)
    for tensor in request.inputs:
        params = {k: v for k, v in _plain(tensor.parameters or {}).items() if k != "binary_data_size"}
        entry = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype, "parameters": params}
        raw = tensor._raw_data  # gRPC's raw_input_contents, as the binary extension lays them out
        if raw is None and tensor.datatype in ("BYTES", "UINT8"):
            raw = _contents_bytes(tensor)
        if raw is None:
            entry["data"] = []  # a datatype the core refuses, by name
        else:
            entry["parameters"]["binary_data_size"] = len(raw)
            chunks.append(bytes(raw))
        doc["inputs"].append(entry)
    if request.request_outputs:
        doc["outputs"] = [{"name": o.name, "parameters": _plain(o.parameters or {})} for o in request.request_outputs]
    header = json.dumps(doc, separators=(",", ":")).encode()
    return header + b"".join(chunks), len(header)


def _contents_bytes(tensor) -> bytes:
    try:
        values = tensor.as_numpy()
    except Exception as exc:
        raise bad_request("bad_data", f"The input's contents do not fit its shape and datatype: {exc}") from None
    if tensor.datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in values.reshape(-1).tolist()]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise bad_request("bad_data", "UINT8 data must be integers from 0 to 255.")
    return values.astype(np.uint8).tobytes()


def _plain(params) -> dict:
    """Parameters as plain values (gRPC's InferParameter messages unwrapped)."""
    if isinstance(params, dict) and not any(hasattr(v, "WhichOneof") for v in params.values()):
        return dict(params)
    return to_http_parameters(params)


def infer_response(answer: Answer, model_name: str, request_id: str | None) -> InferResponse:
    rows, request = answer.rows, answer.request
    n, k = len(rows), len(rows[0]) if rows else 0
    outputs = []
    for name in request.outputs:
        values = [entry[name] for row in rows for entry in row]
        array = np.array(values, dtype=_NUMPY.get(name, np.object_)).reshape(n, k)
        if name == "label":
            array = np.array([v.encode() for v in values], dtype=np.object_).reshape(n, k)
        output = InferOutput(name, [n, k], DATATYPES[name])
        output.set_data_from_numpy(array, binary_data=True)
        outputs.append(output)
    return InferResponse(request_id or "", model_name, outputs, model_version=answer.version)


def _raise_unless_ok(answer: Answer) -> None:
    if answer.status != 200:
        raise _grpc_error(answer.error)


def _grpc_error(error: RequestError) -> GrpcException:
    """A request's error as gRPC's status: INVALID_ARGUMENT for what the client can fix,
    INTERNAL for ours; its details the same JSON body a REST client gets."""
    code = StatusCode.INVALID_ARGUMENT if error.code < 500 else StatusCode.INTERNAL
    body = error.answered_in("oip").to_body()
    return GrpcException(status_code=code, details=body.decode() if isinstance(body, bytes) else json.dumps(body))
