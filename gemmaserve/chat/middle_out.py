"""OpenRouter's middle-out context compression: drop whole messages (or tokens) from the middle
of a prompt until it fits the context."""

from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["message_groups", "middle_out", "middle_out_ids"]


def message_groups(messages: Sequence[dict]) -> list[list[dict]]:
    """Messages in the units that must stay together: an assistant turn with tool calls and the
    tool results after it are one unit (a result without its call does not render)."""
    groups: list[list[dict]] = []
    for msg in messages:
        if msg.get("role") == "tool" and groups:
            groups[-1].append(msg)
        else:
            groups.append([msg])
    return groups


def middle_out(messages: Sequence[dict], fits: Callable[[list[dict]], bool]) -> list[dict] | None:
    """`messages` with the fewest units removed from the middle for which `fits(messages)` is true,
    or None when even the shortest form does not fit. Leading system/developer messages and the
    last unit always stay; the removed units are centred on the middle of the rest, so the start
    and the end of the conversation survive, as OpenRouter's middle-out keeps them."""
    groups = message_groups(messages)
    lo = 0
    while lo < len(groups) - 1 and groups[lo][0].get("role") in ("system", "developer"):
        lo += 1
    head, middle, last = groups[:lo], groups[lo:-1], groups[-1:]

    def without(k: int) -> list[dict]:
        keep = len(middle) - k
        kept = middle[: keep // 2] + middle[len(middle) - (keep - keep // 2):] if keep else []
        return [m for g in head + kept + last for m in g]

    if not fits(without(len(middle))):
        return None
    # Fewer messages never make a longer prompt, so the smallest k that fits is found by bisection
    # (a few renders of a long conversation, not one per message).
    lo_k, hi_k = 0, len(middle)
    while lo_k < hi_k:
        k = (lo_k + hi_k) // 2
        if fits(without(k)):
            hi_k = k
        else:
            lo_k = k + 1
    return without(lo_k)


def middle_out_ids(ids: Sequence[int], limit: int, keep_first: int = 1) -> list[int]:
    """Token ids cut to at most `limit` by removing tokens from the middle; the first `keep_first`
    ids (<bos>) are never cut. For raw prompts, which have no message boundaries."""
    ids = list(ids)
    if len(ids) <= limit:
        return ids
    room = max(0, limit - keep_first)
    head = keep_first + room // 2
    tail = room - room // 2
    return ids[:head] + (ids[len(ids) - tail:] if tail else [])
