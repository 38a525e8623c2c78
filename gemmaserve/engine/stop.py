"""Stop-string matching over streamed text: holds back possible stop prefixes, finds the first full match."""

from __future__ import annotations

from typing import Sequence


class StopStringMatcher:
    """Feeds text through, never letting any part of a stop string out.

    Invariant: `_held` (text received but not yet released) is the longest suffix of the stream
    that is a proper prefix of some stop string, and contains no complete stop string once
    matching is active. So a match can only start inside `_held` or the new text, and every
    step costs O(len(new text) + longest stop string), whatever the stream length.

    When several stop strings could match, the one that ENDS first in the stream wins (and
    among those the longest, i.e. the earliest start): that is the match a char-by-char stream
    would see first, so the result does not depend on how the text was split into tokens.
    """

    def __init__(self, stops: Sequence[str], include_stop: bool = False):
        self.stops = [s for s in stops if s]
        self.include_stop = include_stop
        self._held = ""
        self.matched: str | None = None  # the stop string that ended the stream

    @property
    def held(self) -> str:
        return self._held

    def feed(self, text: str, active: bool = True) -> tuple[str, str | None]:
        """Returns (text to release, matched stop string or None). With active=False (min_tokens
        not reached yet) no match is reported, but possible prefixes are still held back so a
        stop string that completes after activation is caught whole."""
        if self.matched is not None:
            return "", self.matched
        if not self.stops:
            return text, None
        old = len(self._held)
        buf = self._held + text
        if active:
            best: tuple[int, int, str] | None = None  # (end, start, stop)
            for s in self.stops:
                # Only matches that end in the new text: `_held` alone never holds a full match
                # (or, if it does, it was produced while matching was inactive).
                i = buf.find(s, max(0, old - len(s) + 1))
                if i >= 0 and (best is None or (i + len(s), i) < best[:2]):
                    best = (i + len(s), i, s)
            if best is not None:
                _, start, s = best
                self.matched = s
                self._held = ""
                return buf[:start] + (s if self.include_stop else ""), s
        hold = self._hold_len(buf)
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold], None

    def flush(self) -> str:
        """Release the held-back text (the stream ended without completing a stop string)."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _hold_len(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string.
        Only positions holding a stop string's first character within its reach are tried, so
        long stop strings cost no memory and ordinary text few comparisons."""
        n, best = len(buf), 0
        for s in self.stops:
            p = buf.find(s[0], max(0, n - len(s) + 1))
            while p != -1 and n - p > best:
                if s.startswith(buf[p:]):
                    best = n - p  # earliest position = longest suffix for this stop string
                    break
                p = buf.find(s[0], p + 1)
        return best
