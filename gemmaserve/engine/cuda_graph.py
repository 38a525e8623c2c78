"""Decode steps replayed from CUDA graphs: static input buffers per (batch, key-width) bucket, one
capture per bucket, and an eager mode that runs the same static-buffer code without capture."""

from __future__ import annotations

import logging
import time
from array import array
from typing import Any

import torch

from gemmaserve.model.batch import ForwardBatch, KindMetadata, KVCaches
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.ops.paged_decode import build_decode_plan, window_first_block

log = logging.getLogger(__name__)

# Key widths (tokens) start here and double: the attention of a step reads width keys per row, so a
# 300-token context replays the 512 graph, not one sized for max_model_len.
MIN_GRAPH_WIDTH = 256
# Widest captured graph (tokens); longer contexts run eagerly. Each width is one more graph per
# batch size, and full layers gather [B, width, Hkv, D] K and V per layer inside the graph's pool.
DEFAULT_MAX_GRAPH_LEN = 8192


def compile_buckets(spec: str | None) -> set[tuple[int, int]] | str:
    """GEMMASERVE_COMPILE_DECODE: buckets whose step is run through torch.compile (inductor fuses the
    ~60 small kernels of a layer) before capture, "BxW,BxW" or "all"; experimental, off by default:
    each bucket compiles for about a minute at the 26B-A4B shape."""
    spec = (spec or "").strip()
    if not spec:
        return set()
    if spec == "all":
        return "all"
    out = set()
    for part in spec.split(","):
        b, _, w = part.strip().partition("x")
        if not (b.isdigit() and w.isdigit()):
            raise ValueError(f"GEMMASERVE_COMPILE_DECODE: {part!r} is not BxW (e.g. 1x1024) or 'all'")
        out.add((int(b), int(w)))
    return out


def batch_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, ... up to max_num_seqs, which is always included (it need not be a power of two)."""
    sizes, b = [], 1
    while b < max_num_seqs:
        sizes.append(b)
        b *= 2
    return sizes + [max_num_seqs]


def width_buckets(block_size: int, max_len: int, min_width: int = MIN_GRAPH_WIDTH) -> list[int]:
    """Powers of two times min_width (rounded up to a block multiple), the last one max_len
    rounded up to a block multiple."""
    top = -(-max_len // block_size) * block_size
    widths, w = [], -(-min_width // block_size) * block_size
    while w < top:
        widths.append(w)
        w *= 2
    return widths + [top]


def graphs_supported(model: Any) -> bool:
    """A step is capturable only if the model takes device-built decode plans (Gemma4ForCausalLM:
    test doubles that read the host lists of a batch do not) and nothing in it reads device values
    back to the host: each experts module says so (graph_safe: the weight-only int8 path reads its
    grouped loop's counts back, plain experts do not)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        return False
    return all(not getattr(layer, "enable_moe", False) or getattr(layer.experts, "graph_safe", False) for layer in layers)


class DecodeGraphRunner:
    """Runs pure-decode steps (one new token per request) at fixed shapes. Every bucket (B, W) owns
    views into one flat int64 device buffer (input ids, positions, seq lens, slot mappings and block
    tables per attention kind), filled by a single host-to-device copy per step. Padding rows
    (seq_len 0) write their K/V into a scratch block no request owns and read only that block.

    capture=True records one CUDA graph per bucket (largest first, sharing one memory pool as vLLM
    does: buckets never replay concurrently, so later, smaller graphs reuse the pool's blocks);
    capture=False calls the same closure directly, which is what the CPU tests exercise."""

    def __init__(
        self,
        model: Any,
        kv_caches: KVCaches,
        config: Gemma4TextConfig,
        block_size: int,
        scratch_blocks: dict[str, int],
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device | str,
        capture: bool,
        max_graph_len: int = DEFAULT_MAX_GRAPH_LEN,
        min_graph_width: int = MIN_GRAPH_WIDTH,
        compile_decode: str | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = torch.device(device)
        self.capture_enabled = capture
        self.specs = config.attention_kinds()
        self.scratch = {s.kind: scratch_blocks[s.kind] for s in self.specs}
        self.batch_sizes = batch_buckets(max_num_seqs)
        self.widths = width_buckets(block_size, min(max_model_len, max_graph_len), min_graph_width)
        most = max(b * (3 + len(self.specs)) + b * sum(self._table_width(w).values())
                   for b in self.batch_sizes for w in self.widths)
        self.buf = torch.zeros(most, dtype=torch.int64, device=self.device)  # every bucket's inputs
        bmax = self.batch_sizes[-1]
        self.rows = torch.arange(bmax + 1, device=self.device)  # query_start_loc and logits_indices
        self.logits = torch.zeros(bmax, config.vocab_size, dtype=torch.float32, device=self.device)  # [Bmax, V]
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.compiled = compile_buckets(compile_decode)  # KernelConfig.compile_decode (experimental)
        self._eager: dict[tuple[int, int], Any] = {}  # bucket -> closure, capture=False

    # -- buckets ------------------------------------------------------------------------------
    def bucket(self, num_seqs: int, max_seq_len: int) -> tuple[int, int] | None:
        """The smallest (B, W) that holds the step, or None (run it eagerly instead)."""
        b = next((b for b in self.batch_sizes if b >= num_seqs), None)
        w = next((w for w in self.widths if w >= max_seq_len), None)
        return None if b is None or w is None else (b, w)

    def _table_width(self, w: int) -> dict[str, int]:
        """Block-table columns per kind at key width w. Windowed kinds send tables that start at the
        window's first block (ops.paged_decode window_tables): at most cdiv(window, bs) + 1 columns,
        which keeps the per-step copy small for long sequences."""
        nb, bs = w // self.block_size, self.block_size
        return {s.kind: nb if s.window is None else min(nb, -(-s.window // bs) + 1) for s in self.specs}

    def _views(self, b: int, w: int) -> dict[str, Any]:
        """The bucket's slices of the flat buffer; the same addresses every step (graphs need that)."""
        nb = self._table_width(w)
        off = 0

        def take(n: int) -> torch.Tensor:
            nonlocal off
            off += n
            return self.buf[off - n : off]

        views: dict[str, Any] = {"input_ids": take(b), "positions": take(b), "seq_lens": take(b)}
        views["slots"] = {s.kind: take(b) for s in self.specs}  # [B] each
        views["tables"] = {s.kind: take(b * nb[s.kind]).view(b, nb[s.kind]) for s in self.specs}  # [B, nb] each
        return views

    def _host_inputs(self, b: int, w: int, step: dict[str, Any]) -> list[int]:
        """The flat buffer's contents for a step, in _views' order, padded to b rows."""
        n, widths, bs = len(step["input_ids"]), self._table_width(w), self.block_size
        pad = b - n
        flat = list(step["input_ids"]) + [0] * pad
        flat += list(step["positions"]) + [0] * pad
        flat += list(step["seq_lens"]) + [0] * pad  # 0 marks a padding row
        for s in self.specs:
            flat += list(step["slots"][s.kind]) + [self.scratch[s.kind] * bs] * pad
        for s in self.specs:
            fill, nb = self.scratch[s.kind], widths[s.kind]
            for row, seq_len in zip(step["tables"][s.kind], step["seq_lens"]):
                first = 0 if s.window is None else window_first_block(seq_len, s.window, bs)
                # Blocks past seq_len (never read) may exceed the bucket's width: cut them.
                part = row[first : first + nb]
                flat += part + [fill] * (nb - len(part))
            flat += [fill] * (nb * pad)
        return flat

    def _forward_fn(self, b: int, w: int):
        """The step as a closure over the bucket's static views: the plans are built on the device
        inside it, so a graph replays the addressing along with the model."""
        v = self._views(b, w)
        windows = {s.kind: s.window for s in self.specs}

        def step() -> None:
            plans = {
                kind: build_decode_plan(
                    v["tables"][kind], v["seq_lens"], self.block_size, windows[kind],
                    w if windows[kind] is None else min(w, windows[kind]), self.scratch[kind] * self.block_size,
                    window_tables=windows[kind] is not None,
                )
                for kind in windows
            }
            batch = ForwardBatch(
                input_ids=v["input_ids"],  # [B]
                positions=v["positions"],  # [B]
                query_start_loc=self.rows[: b + 1],  # [B + 1] one token per row
                seq_lens=v["seq_lens"],  # [B]
                kinds={k: KindMetadata(v["tables"][k], v["slots"][k]) for k in windows},
                logits_indices=self.rows[:b],  # [B] every row, padding included; run() slices
                block_size=self.block_size,
                query_lens_cpu=[1] * b,
                seq_lens_cpu=[0] * b,  # unused: the plans come built
                decode_plans=plans,
            )
            self.logits[:b].copy_(self.model.forward(batch, self.kv_caches))  # [B, V]

        return step

    # -- capture and replay -----------------------------------------------------------------
    def capture(self) -> None:
        """Record every bucket's graph (CUDA only). Inputs are all padding rows while capturing,
        so the warm-up and capture runs write nothing but the scratch blocks."""
        pool = torch.cuda.graph_pool_handle()
        keys = sorted(((b, w) for b in self.batch_sizes for w in self.widths), reverse=True)
        side = torch.cuda.Stream(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            for b, w in keys:
                fn = self._forward_fn(b, w)
                if self.compiled == "all" or (b, w) in self.compiled:
                    fn = torch.compile(fn, dynamic=False)  # compiled by the warm-up call below
                empty = {"input_ids": [], "positions": [], "seq_lens": [],
                         "slots": {s.kind: [] for s in self.specs}, "tables": {s.kind: [] for s in self.specs}}
                self._load(b, w, empty)
                # Warm-up on a side stream (cuBLAS handles, lazily compiled kernels) as capture wants.
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    fn()
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    fn()
                self.graphs[(b, w)] = graph
        torch.cuda.synchronize(self.device)
        log.info("captured %d decode graphs in %.1f s: batch %s x width %s", len(keys), time.perf_counter() - start,
                 self.batch_sizes, self.widths)

    def _load(self, b: int, w: int, step: dict[str, Any]) -> None:
        # Through array('q'): torch.tensor() on a Python list is ~4x slower (2.0 vs 0.5 ms for 37k
        # ints, the tables of 64 x 8000-token sequences), and this runs before every replay.
        host = torch.frombuffer(array("q", self._host_inputs(b, w, step)), dtype=torch.int64)
        if self.device.type == "cuda":
            # Pinned memory makes the copy truly asynchronous; the caching host allocator keeps the
            # block alive until the copy has run.
            self.buf[: host.numel()].copy_(host.pin_memory(), non_blocking=True)
        else:
            self.buf[: host.numel()].copy_(host)

    def run(self, step: dict[str, Any]) -> torch.Tensor:
        """step: input_ids, positions, seq_lens (lists, one entry per request), slots and tables
        (per kind: slot of each new token, block table list of each request). Returns float32
        logits [num_seqs, V], a fresh tensor (the static buffer is overwritten by the next step)."""
        n = len(step["input_ids"])
        key = self.bucket(n, max(step["seq_lens"]))
        if key is None:
            raise ValueError(f"no decode graph holds {n} requests of up to {max(step['seq_lens'])} tokens")
        self._load(*key, step)
        graph = self.graphs.get(key)
        with torch.inference_mode():
            if graph is not None:
                graph.replay()
            elif self.capture_enabled:
                raise RuntimeError(f"decode graph {key} was not captured")
            else:
                if key not in self._eager:
                    self._eager[key] = self._forward_fn(*key)
                self._eager[key]()
            return self.logits[:n].clone()
