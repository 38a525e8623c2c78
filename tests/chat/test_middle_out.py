"""Middle-out compression: whole message units leave from the middle; raw ids lose middle tokens."""

from gemmaserve.chat.middle_out import message_groups, middle_out, middle_out_ids


def _msgs(n: int) -> list[dict]:
    return [{"role": "system", "content": "S"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(n)]


def _contents(msgs):
    return [m["content"] for m in msgs]


def test_tool_results_stay_with_their_call():
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    msgs = [{"role": "user", "content": "q"}, call, {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
            {"role": "user", "content": "u"}, {"role": "user", "content": "q2"}]
    assert message_groups(msgs) == [[msgs[0]], [call, msgs[2], msgs[3]], [msgs[4]], [msgs[5]]]
    # One unit leaves from the middle: the call and both its results go together.
    assert middle_out(msgs, lambda m: len(m) <= 3) == [msgs[0], msgs[4], msgs[5]]


def test_fewest_units_go_and_they_come_from_the_middle():
    msgs = _msgs(8)  # S, m0..m7: the system message and m7 (the last unit) always stay
    seen = []

    def fits(m):
        seen.append(len(m))
        return len(m) <= 6

    # Four of m0..m6 may stay: two from the start and two from the end of that run.
    assert _contents(middle_out(msgs, fits)) == ["S", "m0", "m1", "m5", "m6", "m7"]
    assert len(seen) <= 5  # bisection, not one render per message


def test_nothing_fits_gives_none_and_everything_fits_is_unchanged():
    msgs = _msgs(4)
    assert middle_out(msgs, lambda m: False) is None
    assert middle_out(msgs, lambda m: True) == msgs
    # The shortest form is the system message and the last unit.
    assert _contents(middle_out(msgs, lambda m: len(m) <= 2)) == ["S", "m3"]


def test_raw_ids_lose_their_middle_and_keep_bos():
    ids = list(range(10))
    assert middle_out_ids(ids, 10) == ids
    assert middle_out_ids(ids, 5) == [0, 1, 2, 8, 9]  # <bos>, two from the head, two from the tail
    assert middle_out_ids(ids, 1) == [0]
