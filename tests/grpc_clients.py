"""Open Inference Protocol gRPC requests with a standard client, in a process of its own:
tritonclient.grpc and kserve register the same protobuf names, so one process holds one of them.

    python -m tests.grpc_clients triton|kserve HOST:PORT MODEL PHOTO... -> JSON on stdout
Each photo is one request (a non-image file is a bad input beside them); a second request sends
every photo that is an image in one tensor, and the first one's pixels as UINT8 [1, H, W, 3]."""

from __future__ import annotations

import asyncio
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(data)).convert("RGB"))[None]


def _is_image(data: bytes) -> bool:
    try:
        Image.open(BytesIO(data)).verify()
        return True
    except Exception:
        return False


def triton(address: str, model: str, photos: list[bytes]) -> dict:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(address)

    def one(data: bytes, key: str | None = None):
        tensor = grpc.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        try:
            result = client.infer(model, [tensor], headers={"x-user-id": key} if key else None)
            return {"label": result.as_numpy("label")[0, 0].decode(), "version": result.get_response().model_version}
        except grpc.InferenceServerException as err:
            return {"status": str(err.status()), "details": err.message()}

    with ThreadPoolExecutor(len(photos)) as pool:  # together: the server batches them
        singles = list(pool.map(one, photos))
    images = [p for p in photos if _is_image(p)]
    tensor = grpc.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    batch = client.infer(model, [tensor], outputs=[grpc.InferRequestedOutput("label")], parameters={"topk": 2})
    pixels = _pixels(images[0])
    raw = grpc.InferInput("image", list(pixels.shape), "UINT8")
    raw.set_data_from_numpy(pixels)
    uint8 = client.infer(model, [raw])
    keyed = [one(images[0], f"user-{i}")["version"] for i in range(16)]
    return {"singles": singles, "batch_labels": [[v.decode() for v in row] for row in batch.as_numpy("label")],
            "batch_outputs": [o.name for o in batch.get_response().outputs],
            "uint8_label": uint8.as_numpy("label")[0, 0].decode(), "versions_by_key": keyed,
            "ready": client.is_model_ready(model),
            "metadata_outputs": [o.name for o in client.get_model_metadata(model).outputs]}  # fmt: skip


def kserve(address: str, model: str, photos: list[bytes]) -> dict:
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run():
        client = InferenceGRPCClient(address, timeout=120)
        out = []
        for data in photos:
            tensor = InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
            try:
                response = await client.infer(InferRequest(model_name=model, infer_inputs=[tensor], request_id="k"))
                labels = {o.name: o.as_numpy() for o in response.outputs}["label"]
                out.append({"label": labels[0, 0].decode() if isinstance(labels[0, 0], bytes) else labels[0, 0],
                            "id": response.id})  # fmt: skip
            except Exception as err:  # grpc.aio.AioRpcError
                out.append({"status": str(err.code()), "details": err.details()})
        await client.close()
        return out

    return {"singles": asyncio.run(run())}


if __name__ == "__main__":
    which, address, model, *paths = sys.argv[1:]
    data = [Path(p).read_bytes() for p in paths]
    print(json.dumps((triton if which == "triton" else kserve)(address, model, data)))
