"""Model runner: owns the paged KV tensors, builds one flat ForwardBatch per step, runs and samples."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from gemmaserve.engine.cuda_graph import DEFAULT_MAX_GRAPH_LEN, MIN_GRAPH_WIDTH, DecodeGraphRunner, graphs_supported
from gemmaserve.engine.multimodal import media_embeddings
from gemmaserve.engine.scheduler import ScheduledRequest
from gemmaserve.model.batch import ForwardBatch, KindMetadata
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.ops.dispatch import KernelPolicy


class ModelRunner:
    """Turns the scheduler's choice into model input. `model` is anything with
    `forward(batch, kv_caches) -> [num_sample, V] float32` and
    `allocate_kv_caches(num_blocks, block_size, dtype, device)` (Gemma4ForCausalLM).

    Pure-decode steps go through a DecodeGraphRunner when `static_decode` is on (default: on a CUDA
    device unless `enforce_eager`, as vLLM names it): replayed CUDA graphs, or with enforce_eager /
    on CPU the same fixed-shape code run directly. Prefill and mixed steps always run eagerly."""

    def __init__(
        self,
        model: Any,
        config: Gemma4TextConfig,
        num_blocks: dict[str, int],
        block_size: int,
        kv_dtype: torch.dtype,
        device: torch.device | str,
        sampler: Any,
        *,
        max_num_seqs: int = 32,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        static_decode: bool | None = None,
        max_graph_len: int = DEFAULT_MAX_GRAPH_LEN,
        min_graph_width: int = MIN_GRAPH_WIDTH,
        kernel_policy: KernelPolicy | None = None,
        compile_decode: str | None = None,
    ):
        # Fused projections once the weights are final (loaded, maybe int8): fewer matmuls per step.
        if hasattr(model, "fuse_"):
            model.fuse_()
        # The kernel choices, made once for this machine and device, handed to every module after the
        # last module swap (fuse_); None keeps the model's own (the ops' default policy).
        if kernel_policy is not None and hasattr(model, "use_kernel_policy"):
            model.use_kernel_policy(kernel_policy)
        self.kernel_policy = kernel_policy
        self.model = model
        self.config = config
        self.block_size = block_size
        self.device = torch.device(device)
        self.kinds = [s.kind for s in config.attention_kinds()]
        self.sampler = sampler
        # The engine's EncoderCache when the model takes media: prepare() reads soft-token embeddings there.
        self.encoder_cache: Any = None
        # After execute(): the requests and positions whose next prompt token wants a logprob, and
        # their logits [len(rows), V] (rows past the sampled ones in the forward's logits_indices).
        self.prompt_rows: list[tuple[Any, int]] = []
        self.prompt_logits: torch.Tensor | None = None
        # Graphs are captured only on CUDA, unless disabled, for models whose static steps never read
        # back to the host (int8 experts do); static_decode=True without that runs the same code eagerly.
        capture = self.device.type == "cuda" and not enforce_eager and graphs_supported(model)
        if static_decode is None:
            static_decode = capture
        self.graphs: DecodeGraphRunner | None = None
        if not static_decode:
            self.kv_caches = model.allocate_kv_caches(num_blocks, block_size, kv_dtype, self.device)
            return
        # One scratch block per kind past the manager's blocks: the graph's padding rows write and
        # read only there, so no request's KV is ever touched by them.
        with_scratch = {k: n + 1 for k, n in num_blocks.items()}
        self.kv_caches = model.allocate_kv_caches(with_scratch, block_size, kv_dtype, self.device)
        longest = max_model_len or min(config.max_position_embeddings, max(num_blocks.values()) * block_size)
        self.graphs = DecodeGraphRunner(
            model, self.kv_caches, config, block_size, dict(num_blocks), max_num_seqs, longest, self.device,
            capture=capture, max_graph_len=max_graph_len, min_graph_width=min_graph_width, compile_decode=compile_decode,
        )
        if capture:
            self.graphs.capture()

    def prepare(self, scheduled: Sequence[ScheduledRequest]) -> ForwardBatch:
        # Plain Python ints and one torch.tensor() per field: per-request tensor ops cost more
        # than the arithmetic itself at decode sizes (measured ~0.4 ms per request per step).
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        logits_indices: list[int] = []
        slots: dict[str, list[int]] = {k: [] for k in self.kinds}
        self.prompt_rows = []
        prompt_indices: list[int] = []
        for s in scheduled:
            req, start, n = s.request, s.start, s.num_new_tokens
            span = range(start, start + n)
            input_ids.extend(req.all_token_ids[start : start + n])
            positions.extend(span)
            for kind in self.kinds:
                slots[kind].extend(_slots(req.block_tables[kind], span, bs))
            query_start_loc.append(query_start_loc[-1] + n)
            seq_lens.append(start + n)
            if s.samples:
                logits_indices.append(query_start_loc[-1] - 1)
            if req.prompt_logprobs is not None:
                # Row of position p predicts prompt token p + 1: the chunk's positions before the last prompt token.
                first = query_start_loc[-2] - start
                for p in range(start, min(start + n, req.num_prompt_tokens - 1)):
                    self.prompt_rows.append((req, p))
                    prompt_indices.append(first + p)
        logits_indices += prompt_indices  # after the sampled rows: execute() splits them off

        kinds: dict[str, KindMetadata] = {}
        for kind in self.kinds:
            tables = [s.request.block_tables[kind] for s in scheduled]
            width = max(len(t) for t in tables)
            padded = [t + [-1] * (width - len(t)) for t in tables]
            block_tables = torch.tensor(padded, dtype=torch.int32)  # [num_seqs, max_blocks]
            slot_mapping = torch.tensor(slots[kind], dtype=torch.int64)  # [T]
            # A released sliding block is -1: a new token must never land there.
            assert min(slots[kind]) >= 0, "a new token was mapped to a released block"
            kinds[kind] = KindMetadata(block_tables=self._dev(block_tables), slot_mapping=self._dev(slot_mapping))

        mm = media_embeddings(scheduled, self.encoder_cache, self.device) if self.encoder_cache is not None else None
        return ForwardBatch(
            mm_rows=mm[0] if mm else None,  # [M]
            mm_embeds=mm[1] if mm else None,  # [M, H]
            mm_blocks=mm[2] if mm else None,
            input_ids=self._dev(torch.tensor(input_ids, dtype=torch.int64)),  # [T]
            positions=self._dev(torch.tensor(positions, dtype=torch.int64)),  # [T]
            query_start_loc=self._dev(torch.tensor(query_start_loc, dtype=torch.int32)),  # [num_seqs + 1]
            seq_lens=self._dev(torch.tensor(seq_lens, dtype=torch.int32)),  # [num_seqs]
            kinds=kinds,
            logits_indices=self._dev(torch.tensor(logits_indices, dtype=torch.int64)),  # [num_sample]
            block_size=bs,
            query_lens_cpu=[s.num_new_tokens for s in scheduled],
            seq_lens_cpu=seq_lens,
        )

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        # From pinned memory a non_blocking copy really is asynchronous (from pageable memory it
        # would be staged synchronously); the caching host allocator holds the block until it ran.
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t if self.device.type == "cpu" else t.to(self.device)

    def _static_step(self, scheduled: Sequence[ScheduledRequest]) -> dict[str, Any] | None:
        """The graph runner's inputs for a pure-decode step that fits a bucket, else None."""
        if self.graphs is None or not scheduled or any(s.num_new_tokens != 1 for s in scheduled):
            return None
        if any(getattr(s.request, "mm_spans", None) and s.start < s.request.mm_spans[-1].end for s in scheduled):
            return None  # a media soft token: its embedding comes from the encoder cache
        if any(s.request.prompt_logprobs is not None and s.start < s.request.num_prompt_tokens - 1 for s in scheduled):
            return None  # a one-token prompt chunk that wants its logprob: the graph returns sampled rows only
        positions = [s.start for s in scheduled]
        seq_lens = [p + 1 for p in positions]
        if self.graphs.bucket(len(scheduled), max(seq_lens)) is None:
            return None
        bs = self.block_size
        tables = {k: [s.request.block_tables[k] for s in scheduled] for k in self.kinds}
        slots = {k: [_slots(t, (p,), bs)[0] for t, p in zip(tables[k], positions)] for k in self.kinds}
        for kind in self.kinds:
            assert min(slots[kind]) >= 0, "a new token was mapped to a released block"
        return {
            "input_ids": [s.request.all_token_ids[s.start] for s in scheduled],
            "positions": positions,
            "seq_lens": seq_lens,
            "slots": slots,
            "tables": tables,
        }

    def execute(self, scheduled: Sequence[ScheduledRequest]) -> torch.Tensor:
        """Run one step; float32 logits [num_sample, V] in the order of the sampling requests."""
        self.prompt_rows, self.prompt_logits = [], None
        step = self._static_step(scheduled)
        if step is not None:
            logits = self.graphs.run(step)  # [num_seqs, V]
            sampled = [i for i, s in enumerate(scheduled) if s.samples]
            if len(sampled) == len(scheduled):
                return logits
            return logits[torch.tensor(sampled, dtype=torch.int64, device=logits.device)]
        batch = self.prepare(scheduled)
        with torch.inference_mode():
            logits = self.model.forward(batch, self.kv_caches)  # [num_sample + len(prompt_rows), V]
        if not self.prompt_rows:
            return logits
        n = logits.shape[0] - len(self.prompt_rows)
        self.prompt_logits = logits[n:]
        return logits[:n]

    def sample(self, logits: torch.Tensor, states: list[Any], outputs: list[list[int]]) -> list[Any]:
        """Sample every row; if the batch call fails (say a constraint raised), retry row by row
        so one request's failure becomes that request's error (an Exception in its slot)."""
        with torch.inference_mode():
            try:
                return list(self.sampler.sample(logits, states, outputs))
            except Exception:
                results: list[Any] = []
                for i in range(len(states)):
                    try:
                        results.extend(self.sampler.sample(logits[i : i + 1], states[i : i + 1], outputs[i : i + 1]))
                    except Exception as exc:  # noqa: BLE001 - isolated to this request
                        results.append(exc)
                return results


def _slots(table: list[int], positions: Sequence[int], block_size: int) -> list[int]:
    """Flat cache slots (block_id * block_size + offset) of token positions, from a request's block table."""
    return [table[p // block_size] * block_size + p % block_size for p in positions]
