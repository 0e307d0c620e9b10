"""Bounded decoding memory: a per-worker budget of pixels being decoded, and giving freed heap
memory back to the system after a batch of large images."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager


class DecodeBudget:
    """At most `pixels` pixels decoding at once in this worker; a large image waits for budget
    rather than every decoding thread holding one. One image always proceeds alone, however
    large, so nothing waits forever."""

    def __init__(self, pixels: int):
        self.pixels = max(1, int(pixels))
        self.in_use = 0
        self._decoded = 0  # pixels held since take_decoded() last ran
        self._free = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        with self._free:
            self._free.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.pixels)
            self.in_use += pixels
            self._decoded += pixels
        try:
            yield
        finally:
            with self._free:
                self.in_use -= pixels
                self._free.notify_all()

    def take_decoded(self) -> int:
        """Pixels decoded under this budget since the last call."""
        with self._free:
            decoded, self._decoded = self._decoded, 0
            return decoded


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Return the heap pages freed after large decodes to the system (glibc's malloc_trim); the
    allocator keeps them otherwise, and a burst of large images would hold the worker's memory."""
    return bool(_TRIM and _TRIM(0))
