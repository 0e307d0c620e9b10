"""Input errors: the one exception type that a client's request may cause."""

from __future__ import annotations

import re

MAX_REASON_CHARS = 200
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


class InputError(Exception):
    """A request the client can fix; carries its HTTP code and a short type name."""

    def __init__(self, code: int, type_: str, message: str):
        super().__init__(message)
        self.code = code
        self.type = type_
        self.message = message

    def at(self, where: str) -> "InputError":
        """The same error, its message prefixed with where it happened ("instance 2 of 3")."""
        return InputError(self.code, self.type, f"{where}: {self.message}")

    def to_body(self) -> dict:
        """The JSON body answered to the client: the full message, any Unicode in it kept."""
        return {"code": self.code, "type": self.type, "message": self.message}

    def to_kserve_body(self) -> dict:
        """The body for KServe's protocols (v1 and the Open Inference Protocol): {"error": ...}."""
        return {"error": self.message, "code": self.code, "type": self.type}

    def reason(self) -> str:
        """The HTTP reason phrase handed to TorchServe: printable ASCII only, one line, bounded.

        TorchServe 0.12's worker protocol frames the phrase by its length in characters but
        writes it in UTF-8, so one non-ASCII character corrupts the frame and the frontend drops
        the worker with its whole batch; Netty also refuses CR/LF in a reason phrase."""
        return ascii_reason(self.message)


def ascii_reason(text: str) -> str:
    """Any text -> printable ASCII (non-ASCII as backslash escapes), at most MAX_REASON_CHARS."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    phrase = _NOT_PRINTABLE_ASCII.sub(" ", escaped)
    return phrase if len(phrase) <= MAX_REASON_CHARS else phrase[: MAX_REASON_CHARS - 3] + "..."


def bad_request(type_: str, message: str) -> InputError:
    return InputError(400, type_, message)


def too_large(type_: str, message: str) -> InputError:
    return InputError(413, type_, message)


def unsupported(type_: str, message: str) -> InputError:
    return InputError(415, type_, message)
