"""number_ranges regexes against brute force: integer ranges exact, number bounds exact at integers, widened otherwise."""

import math
import random
import re
from fractions import Fraction

import pytest

from gemmaserve.structured.compiler import SchemaError
from gemmaserve.structured.number_ranges import CAP, bounds, integer_regex, number_regex, uint_range

DECIMALS = sorted({f"{i}{f}" for i in range(-25, 26) for f in ("", ".0", ".5", ".05", ".00", ".99", ".001")}
                  | {"0.25", "-0.25", "007", "1e2", "-5e-1"})


def _schema(rng: random.Random, pick) -> dict:
    lo, hi = pick(), pick()
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    schema = {}
    if lo is not None:
        schema[rng.choice(["minimum", "exclusiveMinimum"])] = lo
    if hi is not None:
        schema[rng.choice(["maximum", "exclusiveMaximum"])] = hi
    return schema


def _holds(schema: dict, v: Fraction, widen: bool = False) -> bool:
    """v within the bounds; `widen` rounds non-integer bounds outward to integers (inclusive)."""
    for key, value in schema.items():
        b, exact = Fraction(value), float(value).is_integer()
        if widen and not exact:
            b = Fraction(math.floor(value) if "inimum" in key else math.ceil(value))
            key = "minimum" if "inimum" in key else "maximum"
        ok = {"minimum": v >= b, "maximum": v <= b, "exclusiveMinimum": v > b, "exclusiveMaximum": v < b}[key]
        if not ok:
            return False
    return True


def test_uint_range_matches_exactly_the_canonical_range():
    rng = random.Random(0)
    cases = [(0, 0), (0, 9), (27, 315), (100, 199), (0, 21), (5, 10**6 - 1), (1, CAP), (999, 1000)]
    cases += [(a, a + rng.randint(0, rng.choice([5, 300, 10**5]))) for a in (rng.randint(0, 10**rng.randint(1, 6)) for _ in range(300))]
    for a, b in cases:
        r = re.compile(uint_range(a, b))
        probes = set(range(max(0, a - 25), a + 25)) | set(range(max(0, b - 25), b + 25)) | {rng.randint(0, 2 * b + 9) for _ in range(25)}
        for x in probes:
            assert bool(r.fullmatch(str(x))) == (a <= x <= b), (a, b, x)
        assert not r.fullmatch("0" + str(a))  # no leading zeros


def test_integer_regex_is_exact():
    rng = random.Random(1)
    for _ in range(400):
        schema = _schema(rng, lambda: rng.choice([None, rng.randint(-120, 120), rng.randint(-240, 240) / 2]))
        try:
            r = re.compile(integer_regex(schema))
        except SchemaError:
            assert not any(_holds(schema, Fraction(x)) for x in range(-130, 131)), schema
            continue
        for x in range(-130, 131):
            assert bool(r.fullmatch(str(x))) == _holds(schema, Fraction(x)), (schema, x)
        assert not r.fullmatch("-0") or not schema


def test_number_regex_exact_at_integer_bounds_widened_otherwise():
    rng = random.Random(2)
    for _ in range(400):
        schema = _schema(rng, lambda: rng.choice([None, rng.randint(-20, 20), rng.randint(-40, 40) / 2]))
        try:
            r = re.compile(number_regex(schema))
        except SchemaError:
            assert not any(_holds(schema, Fraction(x)) for x in DECIMALS if "e" not in x), schema
            continue
        exact = all(float(v).is_integer() for v in schema.values())
        for x in DECIMALS:
            matched = bool(r.fullmatch(x))
            if re.match(r"-?0[0-9]", x):
                assert not matched  # no leading zeros
                continue
            if "e" in x:
                assert not matched or len(schema) < 2  # bounded both ways: written without an exponent
                continue
            v = Fraction(x)
            if _holds(schema, v) and not x.startswith("-0"):
                assert matched, (schema, x)  # every value in range stays writable
            elif matched:
                assert _holds(schema, v, widen=not exact), (schema, x)


def test_bounds_forms():
    assert bounds({"minimum": 1, "exclusiveMinimum": True}) == (1, True, None, False)  # draft 4
    assert bounds({"minimum": 1, "exclusiveMinimum": 3, "maximum": 9.0}) == (3, True, 9, False)
    assert bounds({"exclusiveMaximum": 5, "maximum": 2}) == (None, False, 2, False)
    with pytest.raises(SchemaError, match="finite number"):
        bounds({"minimum": "1"})
    assert number_regex({"minimum": 0}) == number_regex({}).removeprefix("-?")  # sign only: exponent kept
