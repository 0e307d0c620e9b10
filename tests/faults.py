"""Faults injected for real: a TCP proxy whose connections can be cut for a while."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

from tsctl.local_server import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target`. `cut(seconds)` resets every open
    connection and resets new ones for that long, as a network partition would."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        self.down_until = 0.0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()

    def _accept(self) -> None:
        while True:
            client, _ = self._server.accept()
            if time.monotonic() < self.down_until:
                _reset(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset', not an orderly end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
