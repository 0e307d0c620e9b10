"""Per-request errors: what one request is answered instead of its labels."""

from __future__ import annotations

import json
import re
import reprlib

MAX_REASON_CHARS = 200
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


class RequestError(Exception):
    """One request's answer other than its labels: HTTP code, a short type name and a message."""

    def __init__(self, code: int, type_: str, message: str, protocol: str = "plain"):
        super().__init__(message)
        self.code = code
        self.type = type_
        self.message = message
        self.protocol = protocol  # the protocol whose error form answers it: "plain", or KServe's

    def at(self, where: str) -> RequestError:
        """The same error, its message prefixed with where it happened ("instance 2 of 3")."""
        return type(self)(self.code, self.type, f"{where}: {self.message}", self.protocol)

    def answered_in(self, protocol: str) -> RequestError:
        """The same error, answered in `protocol`'s error form."""
        return type(self)(self.code, self.type, self.message, protocol)

    def to_body(self):
        """The JSON answered to the client, the full message with any Unicode in it kept:
        {"code", "type", "message"} for the plain forms; for KServe's protocols (v1 and the
        Open Inference Protocol) their {"error": ...} object, as JSON bytes."""
        if self.protocol == "plain":
            return {"code": self.code, "type": self.type, "message": self.message}
        return json.dumps({"error": self.message, "code": self.code, "type": self.type}).encode()

    def reason(self) -> str:
        """The HTTP reason phrase handed to TorchServe: printable ASCII only, one line, bounded.

        TorchServe 0.12's worker protocol frames the phrase by its length in characters but
        writes it in UTF-8, so one non-ASCII character corrupts the frame and the frontend drops
        the worker with its whole batch; Netty also refuses CR/LF in a reason phrase."""
        return ascii_reason(self.message)


class InputError(RequestError):
    """A request the client can fix (4xx)."""


def internal_error(stage: str, exc: BaseException) -> RequestError:
    """A bug of ours while handling one request: its 500, never blamed on the client."""
    return RequestError(
        500,
        "internal_error",
        f"The server failed while {stage} this request ({type(exc).__name__}); the error is logged on the server.",
    )


def ascii_reason(text: str) -> str:
    """Any text -> printable ASCII (non-ASCII as backslash escapes), at most MAX_REASON_CHARS."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    phrase = _NOT_PRINTABLE_ASCII.sub(" ", escaped)
    return phrase if len(phrase) <= MAX_REASON_CHARS else phrase[: MAX_REASON_CHARS - 3] + "..."


_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel, _PREVIEW.maxstring, _PREVIEW.maxother, _PREVIEW.maxlist, _PREVIEW.maxdict = 2, 40, 40, 6, 6


def preview(value) -> str:
    """A short repr of a client's value for a message: bounded in length and depth, so a JSON
    value nested thousands deep never recurses."""
    return _PREVIEW.repr(value)


def bad_request(type_: str, message: str) -> InputError:
    return InputError(400, type_, message)


def too_large(type_: str, message: str) -> InputError:
    return InputError(413, type_, message)


def unsupported(type_: str, message: str) -> InputError:
    return InputError(415, type_, message)
