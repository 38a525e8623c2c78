"""Start-up warm-up: run the step shapes serving will use once before the first request (page faults
on the weights, the kernel library's build and oneDNN's JIT for each GEMM shape, allocator growth),
measure the machine's prefill speed, and size the per-step prompt cap from it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from gemmaserve.types import SamplingParams

if TYPE_CHECKING:
    from gemmaserve.engine.engine import Engine

log = logging.getLogger(__name__)

# The per-step prompt cap aims at this much prefill time per step: the 512-token cap chosen by the
# serving A/Bs on the 2-core AMX box (README "Step scheduling") was ~0.45 s of prefill there. A
# machine that prefills slower gets a smaller cap so running streams never wait much longer than that
# between two tokens because of someone else's prompt; a faster one keeps the configured cap.
TARGET_PREFILL_STEP_S = 0.5
# The cap never goes below this (smaller chunks re-read the weights for too few tokens) and moves in
# multiples of CAP_STEP tokens.
MIN_ADAPTIVE_CAP = 128
CAP_STEP = 64
# Decode batch sizes the warm-up runs through: each is a distinct kernel path (one-call layer up to 16
# or 32 rows, GEMV groups of 8 / 32, torch beyond).
_DECODE_ROWS = (1, 4, 8, 16, 32)


@dataclass(frozen=True)
class WarmupReport:
    """What the warm-up measured."""

    seconds: float  # wall time of the whole warm-up
    prefill_tokens: int  # prompt length of the measured prefill
    prefill_s: float  # its step time, warm (the second identical shape)
    cold_prefill_s: float  # the first prefill step (page faults, JIT)
    prefill_cap: int | None  # the per-step prompt cap in force after the warm-up

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else float("inf")


def adaptive_cap(prefill_tok_s: float, configured: int) -> int:
    """The per-step prompt cap for a machine that prefills `prefill_tok_s` tokens/s: what fits in
    TARGET_PREFILL_STEP_S, in CAP_STEP multiples, within [MIN_ADAPTIVE_CAP, configured]."""
    fit = int(prefill_tok_s * TARGET_PREFILL_STEP_S) // CAP_STEP * CAP_STEP
    return max(min(MIN_ADAPTIVE_CAP, configured), min(configured, fit))


def _prompt(gen: torch.Generator, n: int, vocab: int, banned: frozenset[int]) -> list[int]:
    # Ordinary token ids (past the control tokens, never a media soft token), random so no two warm-up
    # prompts share a prefix (a prefix-cache hit would time the wrong shape).
    low = 1000 if vocab > 2000 else 10
    ids = torch.randint(low, vocab, (n,), generator=gen).tolist()
    return [low if i in banned else i for i in ids]


def _drain(engine: Engine) -> list[float]:
    """Step until idle; the wall time of each step."""
    times = []
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    return times


def warm_up(engine: Engine, adapt_cap: bool) -> WarmupReport:
    """Prefill one cap-sized prompt twice (the second timed: tokens/s of this machine), then decode
    batches of each size in _DECODE_ROWS; with adapt_cap, lower the scheduler's per-step prompt cap
    to what this machine prefills in TARGET_PREFILL_STEP_S. Requests are ordinary ones with ids
    'warmup-*'; all finish (their blocks freed) before this returns."""
    t_start = time.perf_counter()
    sched = engine.scheduler.config
    vocab = engine.runner.config.vocab_size
    n = max(1, min(sched.prefill_chunk, engine.max_model_len - 8))
    gen = torch.Generator().manual_seed(0)
    vision = getattr(engine, "vision", None)
    banned = frozenset() if vision is None else frozenset({vision.config.image_token_id, vision.config.video_token_id})
    one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    prefill = []
    for i in range(2):
        engine.add_request(f"warmup-prefill-{i}", _prompt(gen, n, vocab, banned), one)
        prefill.append(_drain(engine)[0])
    rows = [r for r in _DECODE_ROWS if r <= sched.max_num_seqs]
    for r in rows:
        for j in range(r):
            engine.add_request(f"warmup-decode-{r}-{j}", _prompt(gen, 8, vocab, banned),
                               SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
        _drain(engine)
    cap = sched.max_num_prefill_tokens
    tok_s = n / prefill[1] if prefill[1] > 0 else float("inf")
    if adapt_cap and cap is not None:
        new = adaptive_cap(tok_s, cap)
        if new != cap:
            log.info("prefill %.0f tok/s: per-step prompt cap %d -> %d tokens", tok_s, cap, new)
            engine.scheduler.config = replace(sched, max_num_prefill_tokens=new)
            cap = new
    report = WarmupReport(time.perf_counter() - t_start, n, prefill[1], prefill[0], cap)
    log.info("warm-up %.1f s: %d-token prefill %.0f ms cold, %.0f ms warm (%.0f tok/s); prompt cap %s",
             report.seconds, n, 1e3 * prefill[0], 1e3 * prefill[1], report.prefill_tok_s, cap)
    return report
