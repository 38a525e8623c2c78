"""The synchronous engine: add/abort requests and run step() = schedule -> forward -> sample -> outputs."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from gemmaserve.config import CPU_DEFAULT_KV_BYTES, EngineConfig
from gemmaserve.engine.client import EngineStats
from gemmaserve.engine.encoder_cache import EncoderCache
from gemmaserve.engine.kv_cache import KVCacheManager, derive_num_blocks, kind_bytes_per_token
from gemmaserve.engine.model_runner import ModelRunner
from gemmaserve.engine.multimodal import MediaEncoder, find_spans
from gemmaserve.engine.request import Request
from gemmaserve.engine.scheduler import Scheduler
from gemmaserve.engine.warmup import WarmupReport, warm_up
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.ops.dispatch import KernelPolicy
from gemmaserve.types import (
    FinishReason,
    InvalidRequestError,
    MediaInput,
    PromptTooLongError,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)

log = logging.getLogger(__name__)

# Prompt-logprob rows per log_softmax slice (see Engine._store_prompt_logprobs).
PROMPT_LOGPROB_ROWS = 256


class Engine:
    """Owns scheduler, KV cache and model runner. Not thread-safe: one thread drives it
    (AsyncEngine's loop thread, or LLM.generate's loop)."""

    def __init__(
        self,
        model: Any,
        model_config: Gemma4TextConfig,
        config: EngineConfig,
        tokenizer: Any = None,
        *,
        sampler: Any = None,
        sampling_state_cls: Any = None,
        detokenizer_cls: Any = None,
        vision: Any = None,
    ):
        self.config = config
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.vocab_size = model_config.vocab_size
        self.device = torch.device(config.device)
        if sampler is None or sampling_state_cls is None:
            from gemmaserve.engine.sampler import Sampler, SamplingState

            suppress = getattr(tokenizer, "suppress_token_ids", ())
            sampler = sampler or Sampler(self.vocab_size, self.device, suppress_token_ids=suppress)
            sampling_state_cls = sampling_state_cls or SamplingState
        if detokenizer_cls is None and tokenizer is not None:
            from gemmaserve.engine.detokenizer import IncrementalDetokenizer

            detokenizer_cls = IncrementalDetokenizer
        self._state_cls = sampling_state_cls
        self._detok_cls = detokenizer_cls
        # The generation config's list ([1, 106, 50] for Gemma 4), not config.json's shorter one.
        eos = getattr(tokenizer, "eos_token_ids", None) or model_config.eos_token_ids
        self.eos_token_ids = tuple(int(i) for i in eos)

        cache, sched = config.cache, config.scheduler
        specs = model_config.attention_kinds()
        self.max_model_len = config.resolve_max_model_len(model_config.max_position_embeddings)
        kv_dtype = config.kv_torch_dtype
        if cache.num_blocks is not None:
            missing = {s.kind for s in specs} - set(cache.num_blocks)
            if missing:
                raise ValueError(f"cache num_blocks lacks attention kinds {sorted(missing)}")
            num_blocks = {s.kind: cache.num_blocks[s.kind] for s in specs}
        else:
            num_blocks = derive_num_blocks(
                specs,
                cache.block_size,
                kv_dtype.itemsize,
                cache.memory_bytes or self._default_kv_bytes(),
                self.max_model_len,
                sched.max_num_seqs,
                sched.max_num_batched_tokens,
            )
        self.kv = KVCacheManager(specs, num_blocks, cache.block_size, cache.enable_prefix_caching)
        fit = self.kv.max_tokens_per_seq(sched.chunk_for(under_load=False))  # a lone sequence: uncapped chunks
        if fit < self.max_model_len:
            if config.max_model_len is not None:
                raise ValueError(f"the KV cache holds {fit} tokens per sequence, below max_model_len {self.max_model_len}")
            log.warning("max_model_len lowered from %d to %d to fit the KV cache", self.max_model_len, fit)
            self.max_model_len = fit
        self.num_blocks = num_blocks
        per_kind = {s.kind: num_blocks[s.kind] * cache.block_size * kind_bytes_per_token(s, kv_dtype.itemsize) for s in specs}
        self.kv_cache_bytes = sum(per_kind.values())
        log.info(
            "KV cache: %s blocks of %d tokens, %.1f MiB (%s); max_model_len %d",
            num_blocks, cache.block_size, self.kv_cache_bytes / 2**20,
            ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in per_kind.items()), self.max_model_len,
        )
        self.scheduler = Scheduler(sched, self.kv)
        # The runner sizes its CUDA graph buckets by the scheduler's batch limit and the context limit.
        self.runner = ModelRunner(
            model, model_config, num_blocks, cache.block_size, kv_dtype, self.device, sampler,
            max_num_seqs=sched.max_num_seqs, max_model_len=self.max_model_len, enforce_eager=config.enforce_eager,
            kernel_policy=KernelPolicy.create(config.kernels, self.device), compile_decode=config.kernels.compile_decode,
        )
        if config.deterministic:
            # After the runner fused the projections (the fused modules must carry the flag too).
            model.batch_invariant_()
        self._arrivals = 0
        # Media: the vision encoder (model.vision.VisionEncoder, None = text only), its cache of
        # embeddings, and the slicing runner; the scheduler releases a finished request's pins.
        self.vision = vision
        self.encoder_cache: EncoderCache | None = None
        self.media_encoder: MediaEncoder | None = None
        self._step_seconds = 0.0  # the last model step's wall time: the encoder's slice between steps
        if vision is not None:
            self.encoder_cache = EncoderCache(config.encoder_cache_bytes)
            self.media_encoder = MediaEncoder(vision, self.encoder_cache, config.encoder_slice_rows)
            self.runner.encoder_cache = self.encoder_cache
            self.scheduler.on_finish = lambda req: self.encoder_cache.release(req.request_id)
        self.warmup_report: WarmupReport | None = None  # set by from_config when config.warmup

    @classmethod
    def from_config(cls, config: EngineConfig) -> "Engine":
        """Load the checkpoint (or its dummy-weight twin) and its tokenizer."""
        from gemmaserve.model.hub import resolve_model_path
        from gemmaserve.model.loader import CheckpointError, load_model, load_vision
        from gemmaserve.tokenizer import Tokenizer

        path = Path(resolve_model_path(config.model))
        try:
            model, model_config = load_model(
                path,
                dtype=config.torch_dtype,
                device=config.device,
                dummy_weights=config.dummy_weights,
                quantization=config.quantization,
                seed=config.seed,
            )
        except CheckpointError as exc:
            # A weightless directory (make-demo-model --size 26b-a4b) is meant for random weights.
            if not config.dummy_weights and not any(path.glob("*.safetensors")):
                raise CheckpointError(f"{exc}; for random weights pass --dummy-weights") from exc
            raise
        tokenizer = Tokenizer.from_dir(path) if (path / "tokenizer.json").is_file() else None
        vision = load_vision(path, dtype=config.torch_dtype, device=config.device,
                             dummy_weights=config.dummy_weights, seed=config.seed)
        engine = cls(model, model_config, config, tokenizer, vision=vision)
        if config.warmup:
            engine.warmup_report = warm_up(engine, config.adaptive_prefill)
        return engine

    def _default_kv_bytes(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.85)  # headroom for activations
        return CPU_DEFAULT_KV_BYTES

    # -- requests ---------------------------------------------------------------------------
    def make_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
        media: list[MediaInput] | None = None,
    ) -> Request:
        """Validate and build a request without touching engine state (safe from any thread).
        `media` are the processed images/videos whose soft-token runs the prompt holds, in order."""
        ids = [int(t) for t in prompt_token_ids]
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        if params.max_tokens is not None and params.max_tokens < (0 if params.prompt_logprobs is not None else 1):
            raise InvalidRequestError("max_tokens must be at least 1 (0 only with prompt_logprobs)")
        if len(ids) + (params.max_tokens or 1) > self.max_model_len:
            raise PromptTooLongError(len(ids), self.max_model_len, params.max_tokens)
        state = self._state_cls(params, ids, self.vocab_size, self.eos_token_ids)
        detok = self._detok_cls(self.tokenizer, params) if self._detok_cls is not None else None
        eos = set() if params.ignore_eos else set(self.eos_token_ids)
        req = Request(request_id, ids, params, eos, state, detok)
        if params.ignore_eos:
            req.stop_ids = set()
        if media or self._has_soft_tokens(ids):
            self._attach_media(req, list(media or []))
        return req

    def _has_soft_tokens(self, ids: list[int]) -> bool:
        if self.vision is None:
            return False
        cfg = self.vision.config
        return cfg.image_token_id in ids or cfg.video_token_id in ids

    def _attach_media(self, req: Request, media: list[MediaInput]) -> None:
        if self.vision is None:
            raise InvalidRequestError("this model has no vision tower: it takes no images or video")
        cfg = self.vision.config
        spans = find_spans(req.prompt_token_ids, media, cfg.image_token_id, cfg.video_token_id)
        budget = self.config.scheduler.max_num_batched_tokens
        for span in spans:
            if span.end - span.start > budget:  # a span is computed in one step: it must fit one
                raise InvalidRequestError(f"an image of {span.end - span.start} soft tokens exceeds the step "
                                          f"budget max_num_batched_tokens={budget}")
        if spans and spans[-1].end >= req.num_prompt_tokens:
            raise InvalidRequestError("the prompt cannot end with media soft tokens")
        for item in media:
            if item.position_ids.numel() and int(item.position_ids.max()) >= cfg.position_embedding_size:
                raise InvalidRequestError("an image is longer than the vision tower's position table")
        req.media, req.mm_spans, req.mm_ready = media, spans, [False] * len(spans)

    def add(self, req: Request) -> None:
        req.arrival = self._arrivals
        self._arrivals += 1
        self.scheduler.add_request(req)

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
        media: list[MediaInput] | None = None,
    ) -> None:
        self.add(self.make_request(request_id, prompt_token_ids, params, media))

    def abort(self, request_id: str) -> RequestOutput | None:
        """Abort now, freeing every block; returns the final ABORT output (None if unknown)."""
        req = self.scheduler.abort_request(request_id)
        return None if req is None else self._output(req, [], "", None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_usage=self.kv.usage,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_cache_hit_rate=self.kv.stats.hit_rate,
        )

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step; returns an output for every request that produced a token or finished."""
        failed = self._encode_media() if self.media_encoder is not None else []
        return failed + self._model_step() if failed else self._model_step()

    def _model_step(self) -> list[RequestOutput]:
        sched_out = self.scheduler.schedule()
        if sched_out.is_empty:
            if self._media_pending():
                return []  # only media encoding to do: the next step continues it
            return self._fail_unschedulable()
        scored = [s.request for s in sched_out.scheduled if s.completes and not s.samples]  # max_tokens=0
        sampling = [s.request for s in sched_out.scheduled if s.samples]
        t0 = time.perf_counter()
        try:
            logits = self.runner.execute(sched_out.scheduled)
            self._step_seconds = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a failed forward fails its requests, not the loop
            log.exception("forward pass failed")
            outs = []
            for s in sched_out.scheduled:
                self.scheduler.finish_request(s.request, FinishReason.ERROR, error=f"forward failed: {exc}")
                outs.append(self._output(s.request, [], "", None))
            return outs
        self.scheduler.on_step_done(sched_out)
        if getattr(self.runner, "prompt_rows", None):  # test doubles of the runner have none
            self._store_prompt_logprobs(self.runner.prompt_rows, self.runner.prompt_logits)
        outputs = []
        for req in scored:
            self.scheduler.finish_request(req, FinishReason.LENGTH)
            outputs.append(self._output(req, [], "", None))
        if not sampling:
            return outputs
        results = self.runner.sample(
            logits, [r.sampling_state for r in sampling], [r.output_token_ids for r in sampling]
        )
        for req, res in zip(sampling, results):
            try:
                if isinstance(res, Exception):
                    raise res
                outputs.append(self._process_token(req, res))
            except Exception as exc:  # noqa: BLE001 - isolated to this request
                log.warning("request %s failed: %s", req.request_id, exc)
                self.scheduler.finish_request(req, FinishReason.ERROR, error=f"{type(exc).__name__}: {exc}")
                outputs.append(self._output(req, [], "", None))
        return outputs

    # -- media ------------------------------------------------------------------------------
    def _media_requests(self) -> list[Request]:
        sched = self.scheduler
        return [r for r in list(sched.running) + list(sched.waiting) if r.mm_spans]

    def _media_pending(self) -> bool:
        return any(not all(r.mm_ready) for r in self._media_requests())

    def _encode_media(self) -> list[RequestOutput]:
        """Encode what the next prefill chunks need. While other requests can run, the encoder gets
        about one model step's time per step (so their inter-token latency at most doubles); when
        every request waits on media, it runs until their media is ready."""
        requests = self._media_requests()
        self.media_encoder.cancel_if_orphaned(requests)
        if not requests:
            return []
        sched = self.scheduler
        others = any(not r.mm_spans or r.clip_chunk(1, 1) > 0 for r in sched.running) or any(
            not r.mm_spans for r in sched.waiting)
        deadline = time.perf_counter() + max(self._step_seconds, 1e-3) if others else None
        failed: list[RequestOutput] = []
        try:
            self.media_encoder.run(requests, deadline)
        except Exception as exc:  # noqa: BLE001 - a failed encode fails the requests waiting on it
            log.exception("vision encoder failed")
            self.media_encoder.job = None
            for req in requests:
                if not all(req.mm_ready):
                    sched.finish_request(req, FinishReason.ERROR, error=f"media encoding failed: {exc}")
                    failed.append(self._output(req, [], "", None))
        return failed

    def _fail_unschedulable(self) -> list[RequestOutput]:
        # Nothing running and the head of the queue still cannot get blocks: it can never run
        # (max_tokens_per_seq guards against this at start-up; this keeps any gap from hanging).
        if self.scheduler.running or not self.scheduler.waiting:
            return []
        req = self.scheduler.waiting[0]
        self.scheduler.finish_request(req, FinishReason.ERROR, error="the request does not fit in the KV cache")
        return [self._output(req, [], "", None)]

    def _process_token(self, req: Request, sampled: Any) -> RequestOutput:
        tid = int(sampled.token_id)
        params = req.params
        req.append_token(tid)
        new_lp = None
        if req.logprobs is not None:
            new_lp = [self._logprob(req, tid, sampled)]
            req.logprobs.extend(new_lp)
        detok = req.detokenizer
        new_text = ""
        if tid in req.stop_ids and req.num_output_tokens >= params.min_tokens:
            # The stop token stays in token_ids but never reaches the text.
            new_text = detok.flush() if detok is not None else ""
            self.scheduler.finish_request(req, FinishReason.STOP, stop_reason=tid)
        else:
            stop_string = None
            if detok is not None:
                delta = detok.add([tid])
                new_text, stop_string = delta.new_text, delta.stop_string
            if stop_string is not None:
                self.scheduler.finish_request(req, FinishReason.STOP, stop_reason=stop_string)
            elif (
                params.max_tokens is not None and req.num_output_tokens >= params.max_tokens
            ) or req.num_tokens >= self.max_model_len:
                if detok is not None:
                    new_text += detok.flush()
                self.scheduler.finish_request(req, FinishReason.LENGTH)
        req.text += new_text
        return self._output(req, [tid], new_text, new_lp)

    def _store_prompt_logprobs(self, rows: list[tuple[Request, int]], logits: torch.Tensor) -> None:
        """rows[i] = (request, position p); logits[i] [V] fp32 predict prompt token p + 1. Same
        distribution as generated-token logprobs: soft-capped logits, no temperature, no masks.
        In slices of PROMPT_LOGPROB_ROWS rows: a chunk's [rows, V] log_softmax would otherwise double
        the logits' memory (2 GiB for 2,048 rows of a 262,144-token vocabulary)."""
        k = max(r.params.prompt_logprobs or 0 for r, _ in rows)
        for lo in range(0, len(rows), PROMPT_LOGPROB_ROWS):
            part = rows[lo : lo + PROMPT_LOGPROB_ROWS]
            lp = torch.log_softmax(logits[lo : lo + len(part)].float(), dim=-1)  # [R, V]
            targets = torch.tensor([r.prompt_token_ids[p + 1] for r, p in part], device=lp.device)  # [R]
            chosen = lp.gather(1, targets[:, None])[:, 0].tolist()
            top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())  # [R, k]
            top_v, top_i = top_v.tolist(), top_i.tolist()
            for i, (req, p) in enumerate(part):
                n = req.params.prompt_logprobs or 0
                top = list(zip(top_i[i][:n], top_v[i][:n]))
                req.prompt_logprobs[p + 1] = self._token_logprob(req, req.prompt_token_ids[p + 1], chosen[i], top)

    def _logprob(self, req: Request, tid: int, sampled: Any) -> TokenLogprob:
        lp = float(sampled.logprob) if sampled.logprob is not None else float("nan")
        return self._token_logprob(req, tid, lp, sampled.top or [])

    def _token_logprob(self, req: Request, tid: int, logprob: float, top: Any) -> TokenLogprob:
        detok = req.detokenizer
        if detok is None:  # no tokenizer: ids only
            text, raw = (lambda _i: ""), (lambda _i: None)
        else:
            text, raw = detok.token_text, detok.token_bytes
        alts = [TopLogprob(int(i), text(int(i)), float(lp), raw(int(i))) for i, lp in top]
        return TokenLogprob(tid, text(tid), float(logprob), alts, raw(tid))

    def _output(
        self, req: Request, new_ids: list[int], new_text: str, new_lp: list[TokenLogprob] | None
    ) -> RequestOutput:
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            new_token_ids=new_ids,
            new_text=new_text,
            token_ids=list(req.output_token_ids),
            text=req.text,
            logprobs=list(req.logprobs) if req.logprobs is not None else None,
            new_logprobs=(new_lp or []) if req.logprobs is not None else None,
            prompt_logprobs=(list(req.prompt_logprobs)
                             if req.prompt_logprobs is not None and req.num_computed_tokens >= req.num_prompt_tokens
                             else None),
            finished=req.is_finished,
            finish_reason=req.finish_reason,
            stop_reason=req.stop_reason,
            num_cached_tokens=req.num_cached_tokens,
            error=req.error,
        )
