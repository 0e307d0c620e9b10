"""Which address KServe's servers listen on. KServe's ModelServer binds every interface (a pod's
network is its own); on a host, where this server has no token auth, `--host 127.0.0.1` keeps
both its REST and gRPC ports on loopback, as TorchServe's are."""

from __future__ import annotations

from concurrent import futures

from grpc import aio
from kserve import model_server
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer


def bind(host: str) -> None:
    """Make the ModelServer started after this listen on `host` (REST and gRPC)."""
    if host in ("", "0.0.0.0", "::"):
        return

    class HostREST(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    class HostGRPC(GRPCServer):
        async def start(self, max_workers):  # KServe's own start, on `host`
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            options = [(f"grpc.max_{way}_message_length", self._kwargs.get(f"grpc_max_{way}_message_length"))
                       for way in ("send", "receive")]  # fmt: skip
            self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                      interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                                      options=options)  # fmt: skip
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            self._server.add_insecure_port(f"{host}:{self._port}")
            await self._server.start()
            await self._server.wait_for_termination()

    model_server.RESTServer, model_server.GRPCServer = HostREST, HostGRPC
