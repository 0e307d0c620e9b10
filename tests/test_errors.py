"""Reason phrases: whatever a message holds, TorchServe is handed printable ASCII."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from handlers.request.errors import MAX_REASON_CHARS, InputError, ascii_reason


@given(st.text(max_size=400))
def test_any_message_gives_a_printable_ascii_phrase_and_keeps_the_message(message):
    err = InputError(400, "x", message)
    phrase = err.reason()
    assert phrase.isascii() and phrase.isprintable() and len(phrase) <= MAX_REASON_CHARS
    assert err.to_body()["message"] == message


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=MAX_REASON_CHARS))
def test_printable_ascii_messages_are_their_own_phrase(message):
    assert ascii_reason(message) == message


def test_non_ascii_is_escaped_and_line_breaks_become_spaces():
    assert ascii_reason("h\u00e9llo\r\nw\u00f6rld \U0001f600") == "h\\xe9llo  w\\xf6rld \\U0001f600"
    assert ascii_reason("a" * 500).endswith("...") and len(ascii_reason("a" * 500)) == MAX_REASON_CHARS
