"""The REST inference routes, in front of KServe's own on the same app: a body reaches the request
core as bytes, bounded before anything parses it, so KServe v1 and the Open Inference Protocol
are read, refused and answered as TorchServe's handler does.

KServe's own REST decoding is not used for inference: it reads a binary BYTES tensor back as
UTF-8 text (an encoded image fails with a 500) and a UINT8 tensor as a Python list, and it parses
JSON of any size. Its other routes (health, readiness, metadata, /metrics) and its gRPC server
serve as they are."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from kserve.errors import ModelNotFound, ModelNotReady

from ..core.exchange import Answer, Item
from ..request.errors import too_large
from ..request.request import KSERVE_V1, OIP


def add_routes(app: FastAPI, models: dict) -> None:
    """Routes for `models` (name -> ClassifierModel), matched before KServe's (added before it adds its own)."""
    router = APIRouter()

    def model_for(name: str):
        model = models.get(name)
        if model is None:
            raise ModelNotFound(name)
        if not model.ready:
            raise ModelNotReady(name)
        return model

    async def infer(name: str, request: Request, protocol: str, version: str | None = None) -> Response:
        model = model_for(name)
        if version is not None and version != model.archive.version:
            raise ModelNotFound(f"{name} version {version}")
        body = await _bounded_body(request, model.max_body_bytes)
        if body is None:
            error = too_large("body_too_large", f"The request body is larger than {model.max_body_bytes} bytes.")
            model.core.metrics.input_error(error.type)
            model.core.metrics.request(protocol, "client_error", 0.0)
            return _response(Answer(413, error.answered_in(protocol).to_body(), {"content-type": "application/json"}))
        return _response(await model.answer(Item(body, dict(request.headers))))

    @router.post("/v1/models/{name}:predict")
    async def v1_predict(name: str, request: Request) -> Response:
        return await infer(name, request, KSERVE_V1)

    @router.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        return await infer(name, request, OIP)

    @router.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_version_infer(name: str, version: str, request: Request) -> Response:
        return await infer(name, request, OIP, version)

    @router.get("/v2/health/live")
    async def live() -> Response:
        """Alive while every model's batching loop runs (the liveness probe); KServe's own says
        yes whenever the process answers HTTP."""
        dead = [name for name, model in models.items() if model.batcher is not None and not model.batcher.alive]
        return JSONResponse({"live": not dead, **({"dead": dead} if dead else {})}, status_code=503 if dead else 200)

    @router.get("/v2/models/{name}/health")
    async def health(name: str) -> Response:
        """What serves and why: the engine chosen and its evidence, the monitor, the experiment."""
        return JSONResponse(model_for(name).describe())

    app.router.routes[:0] = router.routes  # before any route KServe has added


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (declared or as it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _response(answer: Answer) -> Response:
    body = answer.body
    if not isinstance(body, (bytes, bytearray)):
        body = orjson.dumps(body)
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
    media_type = answer.headers.get("content-type") or answer.headers.get("Content-Type") or "application/json"
    return Response(bytes(body), status_code=answer.status, headers=headers, media_type=media_type)
