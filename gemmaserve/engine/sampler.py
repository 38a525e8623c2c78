"""Turns a batch of next-token logits into tokens: constraints, penalties, temperature, top-k/p, min-p, seeds, logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from gemmaserve.types import EngineError, InvalidRequestError, SamplingParams

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 4
# Below this temperature a row is sampled greedily: logits / 1e-6 would only amplify float noise.
GREEDY_TEMPERATURE = 1e-5
# Candidate slice sizes tried (a topk each) before sorting the whole vocabulary: a top_p/min_p set
# that fits in one is found exactly without the sort (190 ms for 32 x 32k rows on one CPU core,
# against 2 ms for topk(64) and 20 ms for topk(1024)).
_CANDIDATE_SIZES = (64, 1024)


class SamplingError(EngineError):
    """A request cannot be sampled (its constraints allow no token). `row_indices` are the batch
    rows that failed, so the engine can fail exactly those requests and sample the rest again."""

    def __init__(self, message: str, row_indices: list[int]):
        self.row_indices = row_indices
        super().__init__(message)


@dataclass
class SampledToken:
    token_id: int
    # Chosen token's logprob under the model distribution (see Sampler), when params.logprobs is set.
    logprob: float | None = None
    # Up to params.logprobs (token_id, logprob) alternatives, best first.
    top: list[tuple[int, float]] = field(default_factory=list)


def _check_range(name: str, value, lo: float, hi: float, lo_open: bool = False) -> None:
    """Raise InvalidRequestError naming `name` unless lo <= value <= hi (lo < value if lo_open)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    # `not (a <= b)` also rejects NaN.
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        left = "(" if lo_open else "["
        raise InvalidRequestError(f"{name} must be in {left}{lo}, {hi}], got {value!r}")


def validate_params(params: SamplingParams, vocab_size: int) -> None:
    """Check every SamplingParams field against the ranges of openrouter-api.md §2.1."""
    least = 0 if params.prompt_logprobs is not None else 1  # 0: score the prompt, generate nothing
    if params.max_tokens is not None and (not isinstance(params.max_tokens, int) or params.max_tokens < least):
        raise InvalidRequestError(f"max_tokens must be >= {least}, got {params.max_tokens!r}")
    if not isinstance(params.min_tokens, int) or params.min_tokens < 0:
        raise InvalidRequestError(f"min_tokens must be >= 0, got {params.min_tokens!r}")
    if params.max_tokens is not None and params.min_tokens > params.max_tokens:
        raise InvalidRequestError(
            f"min_tokens ({params.min_tokens}) must not exceed max_tokens ({params.max_tokens})"
        )
    _check_range("temperature", params.temperature, 0.0, 2.0)
    _check_range("top_p", params.top_p, 0.0, 1.0, lo_open=True)
    if not isinstance(params.top_k, int) or isinstance(params.top_k, bool) or params.top_k < 0:
        raise InvalidRequestError(f"top_k must be an integer >= 0, got {params.top_k!r}")
    _check_range("min_p", params.min_p, 0.0, 1.0)
    _check_range("top_a", params.top_a, 0.0, 1.0)
    _check_range("frequency_penalty", params.frequency_penalty, -2.0, 2.0)
    _check_range("presence_penalty", params.presence_penalty, -2.0, 2.0)
    _check_range("repetition_penalty", params.repetition_penalty, 0.0, 2.0, lo_open=True)
    for tok, bias in params.logit_bias.items():
        if not isinstance(tok, int) or isinstance(tok, bool):
            raise InvalidRequestError(f"logit_bias keys must be integer token ids, got {tok!r}")
        if not 0 <= tok < vocab_size:
            raise InvalidRequestError(f"logit_bias token id {tok} is outside the vocabulary [0, {vocab_size})")
        _check_range(f"logit_bias[{tok}]", bias, -100.0, 100.0)
    if params.logprobs is not None and (
        not isinstance(params.logprobs, int) or isinstance(params.logprobs, bool)
        or not 0 <= params.logprobs <= MAX_LOGPROBS
    ):
        raise InvalidRequestError(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {params.logprobs!r}")
    if params.prompt_logprobs is not None and (
        not isinstance(params.prompt_logprobs, int) or isinstance(params.prompt_logprobs, bool)
        or not 0 <= params.prompt_logprobs <= MAX_LOGPROBS
    ):
        raise InvalidRequestError(f"prompt_logprobs must be in [0, {MAX_LOGPROBS}], got {params.prompt_logprobs!r}")
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidRequestError(f"stop accepts at most {MAX_STOP_STRINGS} sequences, got {len(params.stop)}")
    for s in params.stop:
        if not isinstance(s, str) or not s:
            raise InvalidRequestError(f"stop sequences must be non-empty strings, got {s!r}")
    for tok in params.stop_token_ids:
        if not isinstance(tok, int) or isinstance(tok, bool) or not 0 <= tok < vocab_size:
            raise InvalidRequestError(f"stop_token_ids entry {tok!r} is outside the vocabulary [0, {vocab_size})")
    if params.seed is not None and (not isinstance(params.seed, int) or isinstance(params.seed, bool)):
        raise InvalidRequestError(f"seed must be an integer, got {params.seed!r}")


def top_a_cut(row: torch.Tensor, top_a: float) -> None:
    """OpenRouter's `top_a` on one row [V], in place: ids whose probability is below
    top_a * p_max**2 go to -inf, so the cut is strict when the model is sure and loose when it is
    not. Applied after the request's constraints (a grammar or thinking budget must have masked
    first, or it could keep only ids they forbid) and before temperature, where KoboldAI, which
    introduced it, places it by default."""
    probs = torch.softmax(row.float(), dim=-1)  # [V]
    # p_max >= top_a * p_max**2 for top_a <= 1: the most likely id always survives.
    row.masked_fill_(probs < top_a * probs.max() ** 2, float("-inf"))


class SamplingState:
    """Per-request sampling state, created once when the request is added to the engine.

    Validates the params (InvalidRequestError names the field), owns the request's
    torch.Generator when params.seed is set, and keeps token counts for the penalties up to date
    incrementally (O(new tokens) per step)."""

    def __init__(
        self,
        params: SamplingParams,
        prompt_token_ids: Sequence[int],
        vocab_size: int,
        eos_token_ids: Sequence[int],
    ):
        validate_params(params, vocab_size)
        self.params = params
        self.vocab_size = vocab_size
        self.greedy = params.temperature < GREEDY_TEMPERATURE
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            # manual_seed takes 64-bit values; fold any Python int into that range.
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(params.seed & 0xFFFF_FFFF_FFFF_FFFF)
        # Ids hidden until min_tokens were generated (the engine stops on them otherwise).
        suppress = {t for t in list(eos_token_ids) + list(params.stop_token_ids) if 0 <= t < vocab_size}
        self.min_tokens_ids = torch.tensor(sorted(suppress), dtype=torch.long)
        self.bias_ids = torch.tensor(list(params.logit_bias.keys()), dtype=torch.long)
        self.bias_values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)
        self.has_freq_presence = params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        self.has_repetition = params.repetition_penalty != 1.0
        self.has_penalties = self.has_freq_presence or self.has_repetition
        # Penalty bookkeeping: counts of generated ids, and (for repetition) prompt ids.
        self._prompt_set: set[int] = set()
        self._prompt_ids = torch.empty(0, dtype=torch.long)
        if self.has_repetition:
            self._prompt_set = {t for t in prompt_token_ids if 0 <= t < vocab_size}
            self._prompt_ids = torch.tensor(sorted(self._prompt_set), dtype=torch.long)
        self._counts: dict[int, int] = {}
        self._new_in_output: list[int] = []  # generated ids absent from the prompt, first-seen order
        self._num_seen = 0

    def needs_processing(self, num_output: int) -> bool:
        """True when this row's logits must be edited before temperature (no fast path)."""
        p = self.params
        return bool(p.constraints) or bool(p.top_a) or bool(p.logit_bias) or self.has_penalties or self.min_tokens_active(num_output)

    def min_tokens_active(self, num_output: int) -> bool:
        p = self.params
        return num_output < p.min_tokens and not p.ignore_eos and self.min_tokens_ids.numel() > 0

    def _update_counts(self, output_token_ids: Sequence[int]) -> None:
        """Fold output ids not yet counted into the counts (rebuild if the history shrank)."""
        n = len(output_token_ids)
        if n < self._num_seen:
            self._counts.clear()
            self._new_in_output.clear()
            self._num_seen = 0
        for t in output_token_ids[self._num_seen:]:
            if not 0 <= t < self.vocab_size:
                continue
            if t not in self._counts:
                self._counts[t] = 0
                if t not in self._prompt_set:
                    self._new_in_output.append(t)
            self._counts[t] += 1
        self._num_seen = n

    def penalty_tensors(self, output_token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(distinct generated ids [G], their counts [G] float32, ids seen in prompt or output [S])."""
        self._update_counts(output_token_ids)
        ids = torch.tensor(list(self._counts.keys()), dtype=torch.long)
        counts = torch.tensor(list(self._counts.values()), dtype=torch.float32)
        if self.has_repetition:
            seen = torch.cat([self._prompt_ids, torch.tensor(self._new_in_output, dtype=torch.long)])
        else:
            seen = torch.empty(0, dtype=torch.long)
        return ids, counts, seen


class Sampler:
    """Samples one token per row of a [N, V] logits batch.

    Logprobs are reported under the MODEL distribution: log_softmax of the logits exactly as the
    model returned them (after Gemma's final soft-cap), before constraints, min_tokens, logit_bias,
    penalties, temperature and truncation — what OpenAI reports. Sampling itself uses inverse-CDF
    draws with one uniform number per row: from the request's own generator when it has a seed
    (so its tokens do not depend on its batch mates or position), else from this sampler's one.
    """

    def __init__(
        self,
        vocab_size: int,
        device: torch.device | str = "cpu",
        seed: int | None = None,
        suppress_token_ids: Sequence[int] = (),
    ):
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        # Ids never sampled, for every request (the checkpoint's suppress_tokens: <pad>, media
        # markers); ids past the logits width cannot be sampled anyway.
        ids = sorted({int(i) for i in suppress_token_ids if 0 <= int(i) < vocab_size})
        self.suppress_ids = torch.tensor(ids, dtype=torch.long, device=self.device)  # [S]
        self.generator = torch.Generator(device="cpu")
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def sample(
        self, logits: torch.Tensor, states: list[SamplingState], output_token_ids: list[list[int]]
    ) -> list[SampledToken]:
        """logits: [N, V] float32, row i for states[i]; output_token_ids[i]: tokens generated so far
        (for penalties, min_tokens and constraints). Applies, in order: suppress_token_ids, constraints, top_a, min_tokens
        (suppress eos/stop ids until reached, unless ignore_eos), logit_bias,
        repetition/frequency/presence penalties, then temperature (0 = greedy), top_k, top_p,
        min_p, and draws. Fast path for batches with no penalties/bias/constraints.
        Raises SamplingError when a row's constraints leave no allowed token."""
        n = len(states)
        if logits.dim() != 2 or logits.shape[0] != n or len(output_token_ids) != n:
            raise ValueError(f"logits {tuple(logits.shape)} do not match {n} states / {len(output_token_ids)} outputs")
        if n == 0:
            return []
        logits = logits.float()  # [N, V]; a no-op for the float32 the contract promises
        # Logprobs first: they are taken from the unprocessed model distribution.
        lp_rows = [i for i, s in enumerate(states) if s.params.logprobs is not None]
        raw_logprobs = torch.log_softmax(logits[lp_rows], dim=-1) if lp_rows else None  # [L, V]

        owned = False  # whether `logits` is our copy (the caller's tensor is never edited)
        if self.suppress_ids.numel():
            # Before constraints, so a grammar that allows only suppressed ids fails loudly.
            logits = logits.clone()
            logits[:, self.suppress_ids.to(logits.device)] = float("-inf")
            owned = True
        if any(s.needs_processing(len(o)) for s, o in zip(states, output_token_ids)):
            logits = self.process(logits if owned else logits.clone(), states, output_token_ids)

        greedy_rows = [i for i, s in enumerate(states) if s.greedy]
        random_rows = [i for i, s in enumerate(states) if not s.greedy]
        # A batch of one kind skips the row gather (a [N, V] copy).
        if len(greedy_rows) == n:
            chosen = logits.argmax(dim=-1)
        elif len(random_rows) == n:
            chosen = self._sample_random(logits, states)
        else:
            chosen = torch.empty(n, dtype=torch.long, device=logits.device)  # [N]
            idx = torch.tensor(greedy_rows, device=logits.device)
            chosen[idx] = logits[idx].argmax(dim=-1)
            idx = torch.tensor(random_rows, device=logits.device)
            chosen[idx] = self._sample_random(logits[idx], [states[i] for i in random_rows])
        chosen_list = chosen.tolist()

        out = [SampledToken(token_id=t) for t in chosen_list]
        if raw_logprobs is not None:
            self._fill_logprobs(out, raw_logprobs, lp_rows, states, chosen)
        return out

    # -- logits processors ----------------------------------------------------------------------
    def process(self, logits: torch.Tensor, states: list[SamplingState], outputs: list[list[int]]) -> torch.Tensor:
        """Edit logits [N, V] in place and return them: constraints, min_tokens, logit_bias,
        penalties (everything before temperature). Public so tests and tools can inspect it."""
        dev = logits.device
        dead: list[int] = []
        for i, s in enumerate(states):
            if not s.params.constraints and not s.params.top_a:
                continue
            row = logits[i]  # [V] view: constraints edit it in place
            for c in s.params.constraints:
                c.mask_logits(outputs[i], row)
            if s.params.top_a:
                top_a_cut(row, s.params.top_a)
            if not bool((row > float("-inf")).any()):
                dead.append(i)
        if dead:
            raise SamplingError(
                f"the output constraints allow no next token after {len(outputs[dead[0]])} generated "
                f"tokens (batch rows {dead}); refusing to sample an arbitrary token",
                dead,
            )
        for i, s in enumerate(states):
            if s.min_tokens_active(len(outputs[i])):
                ids = s.min_tokens_ids.to(dev)
                saved = logits[i, ids].clone()
                logits[i, ids] = float("-inf")
                # A constraint that allows only stop ids (a finished grammar) wins over min_tokens:
                # sampling from an empty set would be garbage.
                if not bool((logits[i] > float("-inf")).any()):
                    logits[i, ids] = saved
        bias_rows = [i for i, s in enumerate(states) if s.params.logit_bias]
        if bias_rows:
            rows = torch.cat([torch.full_like(states[i].bias_ids, i) for i in bias_rows]).to(dev)
            cols = torch.cat([states[i].bias_ids for i in bias_rows]).to(dev)
            vals = torch.cat([states[i].bias_values for i in bias_rows]).to(dev)
            logits.index_put_((rows, cols), vals, accumulate=True)
        pen_rows = [i for i, s in enumerate(states) if s.has_penalties]
        if pen_rows:
            self._apply_penalties(logits, [states[i] for i in pen_rows], pen_rows, [outputs[i] for i in pen_rows])
        return logits

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, states: list[SamplingState], rows: list[int], outputs: list[list[int]]) -> None:
        """Sparse, batched penalties: only the (row, token) pairs seen so far are touched."""
        dev = logits.device
        rep_r, rep_c, rep_p = [], [], []
        fp_r, fp_c, fp_v = [], [], []
        for row, s, out in zip(rows, states, outputs):
            ids, counts, seen = s.penalty_tensors(out)
            p = s.params
            if s.has_repetition and seen.numel():
                rep_r.append(torch.full_like(seen, row))
                rep_c.append(seen)
                rep_p.append(torch.full((seen.numel(),), p.repetition_penalty, dtype=torch.float32))
            if s.has_freq_presence and ids.numel():
                fp_r.append(torch.full_like(ids, row))
                fp_c.append(ids)
                # OpenAI: logit -= frequency * count + presence * [count > 0]
                fp_v.append(counts * p.frequency_penalty + p.presence_penalty)
        # Repetition first (HF/vLLM order): divide positive logits, multiply negative ones.
        if rep_r:
            r, c = torch.cat(rep_r).to(dev), torch.cat(rep_c).to(dev)
            pen = torch.cat(rep_p).to(dev)  # [S_total]
            v = logits[r, c]
            logits[r, c] = torch.where(v > 0, v / pen, v * pen)
        if fp_r:
            r, c = torch.cat(fp_r).to(dev), torch.cat(fp_c).to(dev)
            logits.index_put_((r, c), -torch.cat(fp_v).to(dev), accumulate=True)

    # -- drawing --------------------------------------------------------------------------------
    def _uniforms(self, states: list[SamplingState], device: torch.device) -> torch.Tensor:
        """One U[0,1) per row [R]: seeded rows from their own generator, the rest from ours."""
        u = torch.empty(len(states), dtype=torch.float64)
        unseeded = [j for j, s in enumerate(states) if s.generator is None]
        if unseeded:
            u[unseeded] = torch.rand(len(unseeded), generator=self.generator, dtype=torch.float64)
        for j, s in enumerate(states):
            if s.generator is not None:
                u[j] = torch.rand(1, generator=s.generator, dtype=torch.float64)
        return u.to(device)

    def _sample_random(self, logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
        """logits [R, V] -> token ids [R]. Rows without truncation and rows with it take different
        paths (vocab-order vs sorted-order CDF), so they are split into two groups: a seeded row's
        token must not depend on which path its batch mates would have needed."""
        v = logits.shape[1]
        plain = [
            j for j, s in enumerate(states)
            if (s.params.top_k == 0 or s.params.top_k >= v) and s.params.top_p >= 1.0 and s.params.min_p == 0
        ]
        if len(plain) in (0, len(states)):
            return self._sample_group(logits, states)
        trunc = [j for j in range(len(states)) if j not in set(plain)]
        out = torch.empty(len(states), dtype=torch.long, device=logits.device)  # [R]
        for group in (plain, trunc):
            idx = torch.tensor(group, device=logits.device)
            out[idx] = self._sample_group(logits[idx], [states[j] for j in group])
        return out

    def _sample_group(self, logits: torch.Tensor, states: list[SamplingState]) -> torch.Tensor:
        """logits [R, V] -> token ids [R] under temperature, top_k, top_p and min_p."""
        dev = logits.device
        v = logits.shape[1]
        temps = [s.params.temperature for s in states]
        if all(t == 1.0 for t in temps):
            scaled = logits  # [R, V]; never edited in place below
        else:
            scaled = logits / torch.tensor(temps, dtype=torch.float32, device=dev)[:, None]  # [R, V]
        u = self._uniforms(states, dev)  # [R] float64
        top_ks = [s.params.top_k for s in states]
        top_ps = [s.params.top_p for s in states]
        min_ps = [s.params.min_p for s in states]
        if all(k == 0 or k >= v for k in top_ks) and all(p >= 1.0 for p in top_ps) and all(m == 0 for m in min_ps):
            # No truncation: inverse CDF over the vocabulary order, no sort needed.
            probs = torch.softmax(scaled, dim=-1)  # [R, V]
            cdf = torch.cumsum(probs, dim=-1, dtype=torch.float64)  # [R, V]
            # x < total strictly (u is shrunk by more than float64 rounding), so the first cdf
            # entry above x always adds positive mass: a zero-probability id is never chosen.
            x = (u * (1.0 - 2.0**-40) * cdf[:, -1]).unsqueeze(1)  # [R, 1]
            return torch.searchsorted(cdf, x, right=True).squeeze(1)  # [R]

        k_eff_list = [k if 0 < k < v else v for k in top_ks]
        kmax = max(k_eff_list)
        top_p_t = torch.tensor(top_ps, dtype=torch.float32, device=dev)
        min_p_t = torch.tensor(min_ps, dtype=torch.float32, device=dev)
        k_eff = torch.tensor(k_eff_list, device=dev)  # [R]
        # Rows without top_k normalise over the whole vocabulary, whatever slice we keep.
        full_lse = torch.logsumexp(scaled, dim=-1) if kmax == v else torch.zeros(len(states), device=dev)  # [R]
        # Sorting the whole vocabulary is the slow part: try growing candidate slices first. A
        # slice is exact when every row's kept set ends inside it (checked on its last entry).
        vals = ids = probs = None
        for size in (*(c for c in _CANDIDATE_SIZES if c < kmax), kmax):
            if size >= v:
                vals, ids = scaled.sort(dim=-1, descending=True)  # [R, V]
                probs = self._sorted_probs(vals, k_eff, full_lse, v)
                break
            vals, ids = scaled.topk(size, dim=-1)  # [R, C] sorted descending
            probs = self._sorted_probs(vals, k_eff, full_lse, v)  # [R, C]
            fits = (k_eff <= size) | (top_p_t <= probs.sum(dim=-1))
            fits |= probs[:, -1] < min_p_t * probs[:, 0]
            if bool(fits.all()):
                break
        assert vals is not None and ids is not None and probs is not None
        # Each mask keeps a prefix of the descending order (position 0 always survives top_p).
        exclusive = torch.cumsum(probs, dim=-1) - probs  # [R, C] mass strictly before each token
        keep = (exclusive < top_p_t[:, None]) | (top_p_t[:, None] >= 1.0)
        keep &= probs >= min_p_t[:, None] * probs[:, :1]
        keep &= probs > 0
        keep[:, 0] = True  # the most likely token is always allowed
        n_keep = keep.sum(dim=-1)  # [R]
        cdf = torch.cumsum(probs * keep, dim=-1, dtype=torch.float64)  # [R, C]
        x = (u * cdf[:, -1]).unsqueeze(1)  # [R, 1]
        j = torch.searchsorted(cdf, x, right=True).squeeze(1)  # [R]
        j = torch.minimum(j, n_keep - 1)
        return ids.gather(1, j[:, None]).squeeze(1)

    @staticmethod
    def _sorted_probs(vals: torch.Tensor, k_eff: torch.Tensor, full_lse: torch.Tensor, v: int) -> torch.Tensor:
        """Descending logits [R, C] -> probabilities [R, C] renormalised over each row's top-k set
        (over the whole vocabulary for rows without top_k); ids past k are 0."""
        pos = torch.arange(vals.shape[1], device=vals.device)  # [C]
        vals = vals.masked_fill(pos[None, :] >= k_eff[:, None], float("-inf"))
        lse = torch.where(k_eff >= v, full_lse, torch.logsumexp(vals, dim=-1))  # [R]
        return torch.exp(vals - lse[:, None])

    @staticmethod
    def _fill_logprobs(
        out: list[SampledToken], raw: torch.Tensor, rows: list[int], states: list[SamplingState], chosen: torch.Tensor
    ) -> None:
        """raw: [L, V] model log-probs of the rows in `rows`; fills logprob and top lists."""
        idx = torch.tensor(rows, device=raw.device)
        chosen_lp = raw.gather(1, chosen[idx][:, None]).squeeze(1).tolist()  # [L]
        kmax = max(states[i].params.logprobs for i in rows)
        top_vals: list[list[float]] = [[] for _ in rows]
        top_ids: list[list[int]] = [[] for _ in rows]
        if kmax > 0:
            tv, ti = raw.topk(kmax, dim=-1)  # [L, kmax] best first
            top_vals, top_ids = tv.tolist(), ti.tolist()
        for j, i in enumerate(rows):
            k = states[i].params.logprobs
            out[i].logprob = chosen_lp[j]
            out[i].top = list(zip(top_ids[j][:k], top_vals[j][:k]))
