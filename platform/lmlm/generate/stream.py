"""Incremental display text for streaming: what may be sent now without ever taking it back."""
from __future__ import annotations

from .state import SequenceState


class DisplayStream:
    """Feed it a sequence's state after each token; `delta()` returns the new display text.

    Held back until the next token settles it: trailing whitespace (a block that opens next takes
    one preceding space with it), an incomplete UTF-8 character, and the last len(stop)-1 characters
    (a stop string may complete next).
    """

    def __init__(self, stop: list[str] | None = None):
        self.sent = 0
        self.hold = max((len(s) for s in stop or []), default=1) - 1

    def delta(self, state: SequenceState) -> str:
        if state.done:
            return self.final(state.display_text())
        text = state.display_text().rstrip()
        text = text.rstrip("\ufffd")
        end = len(text) - self.hold
        if end <= self.sent:
            return ""
        out, self.sent = text[self.sent : end], end
        return out

    def final(self, display_text: str) -> str:
        out, self.sent = display_text[self.sent :], len(display_text)
        return out
