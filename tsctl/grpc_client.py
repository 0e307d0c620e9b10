"""TorchServe's gRPC APIs. Python stubs are generated with grpcio-tools from the .proto files
inside the installed torchserve (its frontend jar), once per TorchServe and protobuf version
(generated code refuses an older protobuf runtime), into a cache."""

from __future__ import annotations

import importlib
import json
import os
import sys
import zipfile
from pathlib import Path

from tsctl.keys import read_keys

PROTOS = ("inference.proto", "management.proto")


def stubs_dir() -> Path:
    import ts
    from google import protobuf

    version = (Path(ts.__file__).parent / "version.txt").read_text().strip()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "tsctl" / f"grpc-stubs-torchserve-{version}-protobuf-{protobuf.__version__}"


def generate_stubs(out: Path | None = None) -> Path:
    """Extract the .proto files from TorchServe's jar and compile them with grpc_tools.protoc."""
    import ts
    from grpc_tools import protoc

    out = out or stubs_dir()
    if all((out / f"{p[:-6]}_pb2_grpc.py").exists() for p in PROTOS):
        return out
    protos = out / "proto"
    protos.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(Path(ts.__file__).parent / "frontend" / "model-server.jar") as jar:
        for name in (*PROTOS, "google/rpc/status.proto"):
            target = protos / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(jar.read(name))
    well_known = Path(protoc.__file__).parent / "_proto"
    for proto in PROTOS:
        code = protoc.main(
            [
                "protoc",
                f"-I{protos}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                str(protos / proto),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {proto} ({code})")
    # google/rpc/status.proto is imported by inference.proto
    protoc.main(
        ["protoc", f"-I{protos}", f"-I{well_known}", f"--python_out={out}", str(protos / "google/rpc/status.proto")]
    )
    return out


def _modules():
    path = str(generate_stubs())
    if path not in sys.path:
        sys.path.insert(0, path)
    return (
        importlib.import_module("inference_pb2"),
        importlib.import_module("inference_pb2_grpc"),
        importlib.import_module("management_pb2"),
        importlib.import_module("management_pb2_grpc"),
    )


def _raise_for_error_body(prediction: bytes) -> None:
    # TorchServe's gRPC API does not carry a per-request status: a refused input arrives as the
    # handler's JSON error body {"code", "type", "message"} (KServe forms: "error") inside an OK reply.
    try:
        body = json.loads(prediction)
    except ValueError:
        return
    if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"] >= 400 and "type" in body:
        raise RuntimeError(
            f"gRPC Predictions -> {body['code']} {body['type']}: {body.get('message', body.get('error'))}"
        )


class GrpcClient:
    def __init__(self, inference_target: str, management_target: str, key_file: Path):
        import grpc

        self.grpc = grpc
        self.inference_target, self.management_target = inference_target, management_target
        self.key_file = Path(key_file)
        self.inf_pb2, self.inf_grpc, self.mgmt_pb2, self.mgmt_grpc = _modules()

    def predict(self, model: str, image: bytes, version: str | None = None, timeout: float = 60) -> bytes:
        """Raw prediction bytes (the handler's JSON); raises RuntimeError with the server's reason."""
        with self.grpc.insecure_channel(self.inference_target) as channel:
            stub = self.inf_grpc.InferenceAPIsServiceStub(channel)
            request = self.inf_pb2.PredictionsRequest(
                model_name=model, model_version=version or "", input={"data": image}
            )
            try:
                reply = stub.Predictions(
                    request,
                    timeout=timeout,
                    metadata=[("authorization", f"Bearer {read_keys(self.key_file).inference}")],
                )
            except self.grpc.RpcError as err:
                raise RuntimeError(f"gRPC Predictions -> {err.code().name}: {err.details()}") from None
        _raise_for_error_body(reply.prediction)
        return reply.prediction

    def describe(self, model: str, timeout: float = 30) -> str:
        with self.grpc.insecure_channel(self.management_target) as channel:
            stub = self.mgmt_grpc.ManagementAPIsServiceStub(channel)
            try:
                reply = stub.DescribeModel(
                    self.mgmt_pb2.DescribeModelRequest(model_name=model),
                    timeout=timeout,
                    metadata=[("authorization", f"Bearer {read_keys(self.key_file).management}")],
                )
            except self.grpc.RpcError as err:
                raise RuntimeError(f"gRPC DescribeModel -> {err.code().name}: {err.details()}") from None
        return reply.msg
