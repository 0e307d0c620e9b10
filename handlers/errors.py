"""Input errors: the one exception type that a client's request may cause."""

from __future__ import annotations


class InputError(Exception):
    """A request the client can fix; carries its HTTP code and a short type name."""

    def __init__(self, code: int, type_: str, message: str):
        super().__init__(message)
        self.code = code
        self.type = type_
        self.message = message

    def to_body(self) -> dict:
        """The JSON body answered to the client."""
        return {"code": self.code, "type": self.type, "message": self.message}


def bad_request(type_: str, message: str) -> InputError:
    return InputError(400, type_, message)


def too_large(type_: str, message: str) -> InputError:
    return InputError(413, type_, message)


def unsupported(type_: str, message: str) -> InputError:
    return InputError(415, type_, message)
