"""Request bodies read as JSON, with the nesting depth checked before any parser recurses on it."""

from __future__ import annotations

import json
import re

import numpy as np

from .errors import bad_request

MAX_DEPTH = 32  # arrays and objects inside each other; every protocol's documents need fewer than 10
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = np.zeros(256, np.int8)
_OPENING[[ord("["), ord("{")]] = 1
_OPENING[[ord("]"), ord("}")]] = -1
_SCAN_CHUNK = 1 << 20


def parse_json(value: bytes | str):
    """A JSON object or array given as bytes or str -> the document; None for anything else
    (not JSON, or invalid JSON: read as an image, whose error says it looks like JSON).
    Raises bad_json for a document nested deeper than MAX_DEPTH, checked before parsing:
    Python's parser recurses once per level, and a RecursionError would reach the batch."""
    head = value[:1]
    if head not in (b"{", b"[", "{", "["):
        return None
    if too_deep(value):
        raise _too_deep_error()
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None


def too_deep(value: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether the brackets outside JSON strings nest more than `limit` deep. A body with no more
    than `limit` opening brackets cannot (base64 images have none); otherwise the strings are cut
    out and the depth counted with numpy, a block at a time, never by recursion."""
    if (
        value.count("[" if isinstance(value, str) else b"[") + value.count("{" if isinstance(value, str) else b"{")
        <= limit
    ):
        return False
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    brackets = np.frombuffer(_STRING.sub(b"", raw).translate(None, _NOT_BRACKET), np.uint8)
    depth = 0
    for start in range(0, len(brackets), _SCAN_CHUNK):
        steps = np.cumsum(_OPENING[brackets[start : start + _SCAN_CHUNK]], dtype=np.int32) + depth
        if steps.max(initial=depth) > limit:
            return True
        depth = int(steps[-1])
    return False


def value_end(head: bytes) -> int | None:
    """Where the JSON object or array that `head` starts with ends (its closing bracket + 1),
    found from its brackets outside strings; None when it does not close within `head`. Raises
    bad_json when it nests deeper than MAX_DEPTH before it closes. For a JSON header followed by
    binary data, whose bytes may look like anything."""
    if head[:1] not in (b"{", b"["):
        return None
    masked = _STRING.sub(lambda m: b'"' * len(m.group()), head)  # same length: positions stay
    depth = np.cumsum(_OPENING[np.frombuffer(masked, np.uint8)], dtype=np.int32)
    closed = np.flatnonzero(depth == 0)
    end = int(closed[0]) + 1 if closed.size else None
    if depth[:end].max() > MAX_DEPTH:
        raise _too_deep_error()
    return end


def _too_deep_error():
    return bad_request(
        "bad_json",
        f"The JSON body nests arrays and objects more than {MAX_DEPTH} levels deep; "
        f"no request of this model needs more than 10.",
    )
