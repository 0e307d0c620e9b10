"""What a server hands the request core and what it gets back, one per request."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..request.errors import RequestError
from ..request.request import Request


@dataclass
class Item:
    """One request as a server received it: its body (bytes, or a JSON value the server already
    parsed) and its headers by lower-case name; or, from TorchServe, the request item itself
    (`fields`: its "data"/"body" or multipart fields, application/json already parsed)."""

    body: object = None
    headers: dict = field(default_factory=dict)
    fields: dict | None = None


@dataclass
class Answer:
    """One request's answer: status, headers and body (bytes, or a JSON value for the server to
    write). `request` and `rows` (its images' top-k) let a server write the answer in its own
    form (KServe's gRPC); `error` is set for any status but 200."""

    status: int
    body: object
    headers: dict
    request: Request | None = None
    rows: list | None = None
    error: RequestError | None = None
    version: str = ""

    @property
    def reason(self) -> str:
        """The HTTP reason phrase: printable ASCII, bounded (RequestError.reason)."""
        return self.error.reason() if self.error is not None else "OK"
