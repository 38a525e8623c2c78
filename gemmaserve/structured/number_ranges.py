"""Regexes for bounded JSON numbers: integer ranges exactly, numbers exactly for integer bounds.

A grammar cannot compare values, but a decimal range is a regular language: [27, 315] is
`2[7-9]|[3-9][0-9]|[12][0-9]{2}|3(0[0-9]|1[0-5])`. Integers are written canonically (no leading
zeros, no `-0`). A number's integer part is bounded the same way; its fraction decides only at a
bound: x <= 9 allows `9` and `9.000` but not `9.5`, and x > 2 allows `2.5` but not `2.0`. A bound
that is not an integer (minimum 0.5) is enforced on the integer part only (0.25 passes) — the one
relaxation, documented in docs/structured-output.md. Bounded numbers are written without an
exponent (every value in range is still expressible); unbounded ones keep the plain forms.
"""

from __future__ import annotations

import math
from typing import Any

from gemmaserve.structured.compiler import SchemaError

MAX_INT_DIGITS = 19  # int64: a weak model must not run digits until max_tokens
MAX_FRAC_DIGITS = 17  # double precision
CAP = 10**MAX_INT_DIGITS - 1  # largest integer part a grammar writes
UINT = f"(0|[1-9][0-9]{{0,{MAX_INT_DIGITS - 1}}})"
UNUM = UINT + f"(\\.[0-9]{{1,{MAX_FRAC_DIGITS}}})?([eE][+-]?[0-9]{{1,3}})?"
_FRAC = {
    "any": f"(\\.[0-9]{{1,{MAX_FRAC_DIGITS}}})?",
    "zero": f"(\\.0{{1,{MAX_FRAC_DIGITS}}})?",
    "nonzero": f"\\.0{{0,{MAX_FRAC_DIGITS - 1}}}[1-9][0-9]{{0,{MAX_FRAC_DIGITS - 1}}}",
}


def bounds(schema: dict) -> tuple[float | None, bool, float | None, bool]:
    """(low, low_exclusive, high, high_exclusive) from minimum/maximum and exclusiveMinimum/
    exclusiveMaximum (a number in draft 6+, a boolean modifier in draft 4); the tighter wins."""
    lo, lo_x = _num(schema, "minimum"), False
    hi, hi_x = _num(schema, "maximum"), False
    for key, is_low in (("exclusiveMinimum", True), ("exclusiveMaximum", False)):
        v = schema.get(key)
        if v is None or v is False:
            continue
        if v is True:  # draft 4: makes minimum/maximum exclusive
            if is_low:
                lo_x = lo is not None
            else:
                hi_x = hi is not None
            continue
        v = _num(schema, key)
        if is_low and (lo is None or v >= lo):
            lo, lo_x = v, True
        elif not is_low and (hi is None or v <= hi):
            hi, hi_x = v, True
    return lo, lo_x, hi, hi_x


def integer_regex(schema: dict) -> str:
    """Regex body for an integer under the schema's bounds (exact)."""
    lo, lo_x, hi, hi_x = bounds(schema)
    if lo is None and hi is None:
        return f"-?{UINT}"
    a = -CAP if lo is None else (math.floor(lo) + 1 if lo_x else math.ceil(lo))
    b = CAP if hi is None else (math.ceil(hi) - 1 if hi_x else math.floor(hi))
    a, b = max(a, -CAP), min(b, CAP)
    if a > b:
        raise SchemaError(f"integer bounds allow no value (minimum {lo}, maximum {hi})")
    alts = []
    if b >= 0:
        alts.append(uint_range(max(a, 0), b))
    if a < 0:
        alts.append("-" + uint_range(max(-b, 1), -a))
    return _alt(alts)


def number_regex(schema: dict) -> str:
    """Regex body for a number under the schema's bounds (exact for integer bounds)."""
    lo, lo_x, hi, hi_x = bounds(schema)
    if hi is None and (lo is None or (lo == 0 and not lo_x)):
        return UNUM if lo is not None else f"-?{UNUM}"  # sign at most: the plain forms
    if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_x or hi_x))):
        raise SchemaError(f"number bounds allow no value (minimum {lo}, maximum {hi})")
    alts = []
    # x >= 0: the magnitude itself, between max(lo, 0) and hi.
    if hi is None or hi > 0 or (hi == 0 and not hi_x):
        low = (0, False) if lo is None or lo < 0 else (lo, lo_x)
        alts.append(_magnitude(low[0], low[1], hi, hi_x))
    # x < 0: "-" and a magnitude between -min(hi, 0) and -lo, bounds swapped.
    if lo is None or lo < 0:
        low = (0, False) if hi is None or hi > 0 else (-hi, hi_x)
        alts.append("-" + _magnitude(low[0], low[1], None if lo is None else -lo, lo_x))
    return _alt([a for a in alts if a])


def _magnitude(lo: float, lo_x: bool, hi: float | None, hi_x: bool) -> str:
    """Regex for M = INT(.FRAC)? with lo <(=) M <(=) hi, lo >= 0; '' when none."""
    # Integer part i0 at the low end with its fraction class, and i1 at the high end.
    if float(lo).is_integer():
        i0, c0 = int(lo), ("nonzero" if lo_x else "any")
    else:
        i0, c0 = math.floor(lo), "any"  # relaxed: integer part only
    if hi is None or hi > CAP:
        i1, c1 = CAP, "any"
    elif float(hi).is_integer():
        i1, c1 = (int(hi) - 1, "any") if hi_x else (int(hi), "zero")
    else:
        i1, c1 = math.floor(hi), "any"  # relaxed: integer part only
    if i0 > CAP or i1 < i0:
        return ""
    if i0 == i1:
        cls = _meet(c0, c1)
        return "" if cls is None else uint_range(i0, i0) + _FRAC[cls]
    pieces: list[tuple[int, int, str]] = []  # (first, last, fraction class) of the integer part
    mid_lo = i0 if c0 == "any" else i0 + 1
    mid_hi = i1 if c1 == "any" else i1 - 1
    if c0 != "any":
        pieces.append((i0, i0, c0))
    if mid_lo <= mid_hi:
        pieces.append((mid_lo, mid_hi, "any"))
    if c1 != "any":
        pieces.append((i1, i1, c1))
    return _alt([uint_range(a, b) + _FRAC[c] for a, b, c in pieces])


def _meet(a: str, b: str) -> str | None:
    if a == "any":
        return b
    if b == "any" or a == b:
        return a
    return None  # zero and nonzero


def uint_range(a: int, b: int) -> str:
    """Regex for the canonical decimal integers a..b (0 <= a <= b)."""
    if not 0 <= a <= b:
        raise ValueError(f"bad range {a}..{b}")
    sa, sb = str(a), str(b)
    if len(sa) == len(sb):
        return _same_length(sa, sb)
    alts = [_same_length(sa, "9" * len(sa))]
    # Every length strictly between is whole (and the last one too when b is all nines): one
    # alternative for all of them.
    top_whole = sb == "9" * len(sb)
    lo_n, hi_n = len(sa), len(sb) - (1 if top_whole else 2)
    if lo_n <= hi_n:
        alts.append(f"[1-9][0-9]{{{lo_n},{hi_n}}}" if lo_n != hi_n else f"[1-9][0-9]{{{lo_n}}}")
    if not top_whole:
        alts.append(_same_length("1" + "0" * (len(sb) - 1), sb))
    return _alt(alts)


def _same_length(lo: str, hi: str) -> str:
    """Regex for the digit strings lo..hi of one length (lo <= hi numerically)."""
    n = len(lo)
    if lo == hi:
        return lo
    if lo == "0" * n and hi == "9" * n:
        return f"[0-9]{{{n}}}" if n > 1 else "[0-9]"
    if n == 1:
        return _digits(int(lo), int(hi))
    if lo[0] == hi[0]:
        return lo[0] + _same_length(lo[1:], hi[1:])
    rest = n - 1
    tail = "[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"
    # First digit lo[0] (partial unless lo's rest is all zeros), whole middle digits, then hi[0]
    # (partial unless hi's rest is all nines).
    d0 = int(lo[0]) if lo[1:] == "0" * rest else int(lo[0]) + 1
    d1 = int(hi[0]) if hi[1:] == "9" * rest else int(hi[0]) - 1
    alts = []
    if d0 > int(lo[0]):
        alts.append(lo[0] + _same_length(lo[1:], "9" * rest))
    if d0 <= d1:
        alts.append(_digits(d0, d1) + tail)
    if d1 < int(hi[0]):
        alts.append(hi[0] + _same_length("0" * rest, hi[1:]))
    return _alt(alts)


def _digits(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _alt(alts: list[str]) -> str:
    """One alternative as is, several as one group (so a caller can prefix it safely)."""
    if not alts:
        raise SchemaError("numeric bounds allow no value")
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def _num(schema: dict, key: str) -> float | None:
    v: Any = schema.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SchemaError(f"`{key}` must be a finite number, got {v!r}")
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**63 else v
