"""Settings as frozen dataclasses (cache, scheduler, kernels, engine, HTTP server), with all validation;
the only reader of environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}

# A CPU box runs the demo/bench models; a context this long is already minutes of prefill there.
CPU_DEFAULT_MAX_MODEL_LEN = 8192
GPU_DEFAULT_MAX_MODEL_LEN = 32768
CPU_DEFAULT_KV_BYTES = 1 << 30
# `serve`/`generate` on CPU cap a step's prompt tokens at 512 while other requests share the server
# (about half a second of prefill on the 2-core bench box): a 512-token arrival gets its whole prefill
# and first token in the next step beside the running decodes, and no step holds the streams for
# more. Chosen by serving A/Bs (bench model, 512/128 tokens): 16-stream TTFT p50 1.6-1.9x the single
# stream's (5.4-5.9x uncapped); 256 gave the same 16-stream TTFT and 10% less output at 32 streams.
CPU_DEFAULT_MAX_NUM_PREFILL_TOKENS = 512


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a user-facing dtype name ("bfloat16", "fp16", ...) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(set(_DTYPES))}") from None


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache: block size, storage dtype, and either explicit block counts per attention
    kind or a byte budget from which they are derived (see kv_cache.derive_num_blocks)."""

    block_size: int = 16
    kv_dtype: str | None = None  # None = the model's dtype
    num_blocks: Mapping[str, int] | None = None  # per attention kind; overrides memory_bytes
    memory_bytes: int | None = None  # None = a device default
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.kv_dtype is not None:
            parse_dtype(self.kv_dtype)
        if self.num_blocks is not None:
            if not self.num_blocks or any(n <= 0 for n in self.num_blocks.values()):
                raise ValueError("num_blocks needs a positive count for every attention kind")
            object.__setattr__(self, "num_blocks", dict(self.num_blocks))
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError("memory_bytes must be positive")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits for one engine step."""

    max_num_seqs: int = 32  # requests in one step
    max_num_batched_tokens: int = 2048  # token budget of one step (decode + prefill chunks)
    max_waiting: int = 256  # QueueFullError beyond this many queued requests
    long_prefill_chunk: int | None = None  # cap on one request's prefill tokens per step; None = budget
    # Cap on prompt (prefill) tokens of all requests in one step while more than one request is on
    # the server (a lone request's prompt is not capped); decode tokens do not count against it.
    # None = prefills share max_num_batched_tokens with the decodes (the old rule).
    # max_num_batched_tokens still bounds the whole step.
    max_num_prefill_tokens: int | None = None
    # Most prompt tokens a background request (priority > 0: batches) computes in one step. An
    # interactive arrival waits for the step in flight; a background prompt in 512-token chunks made
    # that wait a whole prefill step (batch_ttft: interactive TTFT p50 2.5x idle beside a batch).
    background_prefill_chunk: int = 64

    def __post_init__(self) -> None:
        if self.max_num_seqs <= 0:
            raise ValueError("max_num_seqs must be positive")
        if self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_batched_tokens must be positive")
        if self.max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        if self.long_prefill_chunk is not None and self.long_prefill_chunk <= 0:
            raise ValueError("long_prefill_chunk must be positive")
        if self.max_num_prefill_tokens is not None and self.max_num_prefill_tokens <= 0:
            raise ValueError("max_num_prefill_tokens must be positive")
        if self.background_prefill_chunk <= 0:
            raise ValueError("background_prefill_chunk must be positive")

    @property
    def prefill_chunk(self) -> int:
        """Most prompt tokens one request computes in a step beside other requests."""
        return self.chunk_for(under_load=True)

    def prefill_cap(self, under_load: bool) -> int:
        """Most prompt tokens of all requests in one step: max_num_prefill_tokens when other requests
        share the server (`under_load`), else (or without a cap) the whole step budget."""
        cap = self.max_num_prefill_tokens if under_load else None
        return min(cap or self.max_num_batched_tokens, self.max_num_batched_tokens)

    def chunk_for(self, under_load: bool) -> int:
        """Most prompt tokens one request computes in one step (see prefill_cap)."""
        return min(self.long_prefill_chunk or self.max_num_batched_tokens, self.prefill_cap(under_load))


# ISA tiers of the CPU kernel library, lowest first; each includes the ones below it (ops.dispatch).
CPU_ISA_TIERS = ("portable", "avx2", "avx512", "avx512bf16", "amx")  # ops/cpu_isa.py NAMES; avx512 includes VNNI
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class KernelConfig:
    """Switches for the CPU kernel library and the grouped-GEMM MoE: what ops.dispatch.KernelPolicy is
    built from, together with the detected CPU features and the device. Environment defaults:
    GEMMASERVE_CPU_KERNELS=0 (torch ops only), GEMMASERVE_GROUPED_MM=0, GEMMASERVE_CPU_ISA=<tier> (build
    the kernels for at most that tier, e.g. avx2 on an AVX512 machine), GEMMASERVE_COMPILE_DECODE
    (CUDA-graph buckets compiled before capture), CXX and TORCH_EXTENSIONS_DIR (the kernel build)."""

    cpu_kernels: bool = True  # the gcc-built CPU kernels at all; False = torch ops everywhere
    grouped_mm: bool = True  # the grouped-GEMM MoE (an escape hatch should a torch build's kernel misbehave)
    cpu_isa: str | None = None  # cap on the ISA tier the kernels are built for; None = what the CPU has
    compile_decode: str | None = None  # "all" or "BxW, BxW": decode buckets torch.compile'd before capture
    cxx: str | None = None  # C++ compiler; None = g++ / c++ on PATH
    build_dir: str | None = None  # kernel build cache; None = torch's extension cache

    def __post_init__(self) -> None:
        if self.cpu_isa is not None and self.cpu_isa not in CPU_ISA_TIERS:
            raise ValueError(f"unknown cpu_isa {self.cpu_isa!r}; choose one of {', '.join(CPU_ISA_TIERS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "KernelConfig":
        env = os.environ if environ is None else environ
        return cls(
            cpu_kernels=env.get("GEMMASERVE_CPU_KERNELS", "1") != "0",
            grouped_mm=env.get("GEMMASERVE_GROUPED_MM", "1") != "0",
            cpu_isa=(env.get("GEMMASERVE_CPU_ISA") or "").strip().lower() or None,
            compile_decode=env.get("GEMMASERVE_COMPILE_DECODE"),
            cxx=env.get("CXX") or None,
            build_dir=env.get("TORCH_EXTENSIONS_DIR") or None,
        )


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it: the hub must not be contacted."""
    env = os.environ if environ is None else environ
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build an engine from a checkpoint."""

    model: str = ""  # checkpoint directory or hub id
    dtype: str = "bfloat16"
    device: str = "cpu"
    max_model_len: int | None = None  # None = min(max_position_embeddings, a device default)
    seed: int = 0  # weights for dummy_weights; requests seed themselves via SamplingParams.seed
    quantization: str | None = None
    dummy_weights: bool = False
    enforce_eager: bool = False  # CUDA: decode eagerly instead of replaying CUDA graphs (vLLM's name)
    # Batch-invariant kernels (model.batch_invariant_): a request's tokens do not depend on its batch
    # mates, chunking or prefix-cache hits; slower prefill (README "Deterministic mode").
    deterministic: bool = False
    # Vision: bytes of projected media embeddings kept for reuse (repeats, preemption, prefix hits;
    # 256 MiB holds ~40k soft tokens of the real 2816-wide bf16 model), and the patch rows of one
    # encoder slice between model steps (smaller = finer interleaving with decodes, more overhead).
    encoder_cache_bytes: int = 256 * 2**20
    # 64 rows of the real tower (1152 wide, MLP 4304) are ~1 GFLOP of MLP, tens of ms on a 2-core
    # CPU: about one decode step of the bench model, so a slice never doubles a step on its own.
    encoder_slice_rows: int = 64
    # Run the serving shapes once at start-up (engine/warmup.py) so the first requests are not slower.
    warmup: bool = False
    # With warmup: lower scheduler.max_num_prefill_tokens to what this machine prefills in ~0.5 s.
    adaptive_prefill: bool = False
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig.from_env)

    def __post_init__(self) -> None:
        parse_dtype(self.dtype)
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise ValueError("max_model_len must be positive")
        if self.quantization not in (None, "int8", "int4"):
            raise ValueError(f"unknown quantization {self.quantization!r}; supported: int8, int4")
        if self.deterministic and self.quantization is not None:
            raise ValueError("deterministic mode has no int8/int4 kernels; drop --quantization or --deterministic")
        if self.deterministic and torch.device(self.device).type != "cpu":
            raise ValueError("deterministic mode runs on the CPU kernels; use --device cpu")
        torch.device(self.device)  # raises on a malformed device string
        if self.encoder_cache_bytes < 0 or self.encoder_slice_rows <= 0:
            raise ValueError("encoder_cache_bytes must be >= 0 and encoder_slice_rows positive")

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    @property
    def kv_torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.cache.kv_dtype or self.dtype)

    def resolve_max_model_len(self, max_position_embeddings: int) -> int:
        """The context limit actually served: the user's value, capped by the model's."""
        if self.max_model_len is not None:
            if self.max_model_len > max_position_embeddings:
                raise ValueError(
                    f"max_model_len {self.max_model_len} exceeds the model's {max_position_embeddings}"
                )
            return self.max_model_len
        cap = CPU_DEFAULT_MAX_MODEL_LEN if torch.device(self.device).type == "cpu" else GPU_DEFAULT_MAX_MODEL_LEN
        return min(max_position_embeddings, cap)


def engine_config_from_kwargs(**kwargs) -> EngineConfig:
    """Build an EngineConfig from flat keyword arguments (vLLM-style `LLM(model, **kwargs)`):
    each name goes to whichever of EngineConfig / CacheConfig / SchedulerConfig has that field.
    `kv_cache_memory_bytes` is accepted for CacheConfig.memory_bytes."""
    if "kv_cache_memory_bytes" in kwargs:
        kwargs["memory_bytes"] = kwargs.pop("kv_cache_memory_bytes")
    groups: dict[type, dict] = {EngineConfig: {}, CacheConfig: {}, SchedulerConfig: {}, KernelConfig: {}}
    for key, value in kwargs.items():
        owner = next((cls for cls in groups if key in cls.__dataclass_fields__
                      and key not in ("cache", "scheduler", "kernels")), None)
        if owner is None:
            raise TypeError(f"unknown engine option {key!r}")
        groups[owner][key] = value
    kernels = KernelConfig.from_env()
    if groups[KernelConfig]:  # explicit options over the environment's defaults
        kernels = KernelConfig(**{**kernels.__dict__, **groups[KernelConfig]})
    return EngineConfig(
        **groups[EngineConfig], cache=CacheConfig(**groups[CacheConfig]), scheduler=SchedulerConfig(**groups[SchedulerConfig]),
        kernels=kernels,
    )


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The engine options every command that loads a model takes (`generate`, `serve`), with
    vLLM's names; `engine_config_from_args` maps them."""
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dummy-weights", action="store_true", help="random weights; reads config.json only")
    p.add_argument("--quantization", default=None, choices=["int8", "int4"],
                   help="weight-only: int8 per channel, or int4 group-wise (a compressed-tensors 4-bit checkpoint loads as int4 by itself)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument(
        "--max-num-prefill-tokens", type=int, default=None,
        help=f"cap on prompt tokens per step, decodes not counted (default: {CPU_DEFAULT_MAX_NUM_PREFILL_TOKENS} "
        "on CPU, none on GPU; 0 = none: prompts share --max-num-batched-tokens with decodes)",
    )
    p.add_argument("--kv-cache-memory-gb", type=float, default=None, help="KV cache size (default: by device)")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="CUDA: no CUDA graphs for decode steps")
    p.add_argument(
        "--no-warmup", action="store_true",
        help="skip the start-up warm-up (the serving shapes run once before the first request; on CPU it "
        "also measures prefill speed to size the per-step prompt cap when --max-num-prefill-tokens is unset)",
    )
    p.add_argument(
        "--deterministic", action="store_true",
        help="batch-invariant kernels: a seeded request gives the same tokens alone, batched, chunked or cached "
        "(slower prefill; see README)",
    )


def engine_config_from_args(args: argparse.Namespace, **extra: Any) -> EngineConfig:
    """An EngineConfig from `add_engine_args` options; `extra` adds command-specific fields (e.g.
    max_num_seqs, max_waiting, seed) or overrides one (model: the resolved path), each placed as
    engine_config_from_kwargs places it."""
    gb = args.kv_cache_memory_gb
    fields: dict[str, Any] = dict(
        model=str(args.model), dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
        dummy_weights=args.dummy_weights, quantization=args.quantization, block_size=args.block_size,
        max_num_batched_tokens=args.max_num_batched_tokens, memory_bytes=int(gb * 2**30) if gb else None,
        enable_prefix_caching=not args.no_prefix_caching, enforce_eager=args.enforce_eager,
        deterministic=getattr(args, "deterministic", False),
        warmup=not getattr(args, "no_warmup", True),
        adaptive_prefill=args.max_num_prefill_tokens is None and torch.device(args.device).type == "cpu",
        max_num_prefill_tokens=_prefill_cap(args.max_num_prefill_tokens, args.device),
    )
    return engine_config_from_kwargs(**{**fields, **extra})


def _prefill_cap(value: int | None, device: str) -> int | None:
    """The flag's value; unset = the device default (a CPU's prefill is slow enough that a
    waiting prompt behind others' prefill costs seconds of TTFT; a GPU's is not); 0 = no cap."""
    if value is None:
        return CPU_DEFAULT_MAX_NUM_PREFILL_TOKENS if torch.device(device).type == "cpu" else None
    if value < 0:
        raise ValueError("--max-num-prefill-tokens must be >= 0")
    return value or None


def cpu_isa_cap() -> str | None:
    """GEMMASERVE_CPU_ISA: cap the CPU kernels at a lower instruction-set tier than the CPU has
    ('avx2', 'avx512', 'avx512bf16', 'amx'; ops/cpu_isa.py), for measuring the tiers on one machine.
    Unset or empty = the detected tier. torch's own kernels are capped by ATEN_CPU_CAPABILITY and
    ONEDNN_MAX_CPU_ISA, set before the process starts (cpu_isa.child_env gives all three)."""
    return KernelConfig.from_env().cpu_isa


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "CacheConfig", "SchedulerConfig", "KernelConfig", "EngineConfig", "CPU_ISA_TIERS", "hub_offline",
    "add_engine_args", "engine_config_from_args", "engine_config_from_kwargs", "parse_dtype", "cdiv", "cpu_isa_cap",
]


BASE_MODEL_ID = "google/gemma-4-26b-a4b-it"
CANONICAL_SLUG = "google/gemma-4-26b-a4b-it-20260403"
# Variant suffixes OpenRouter lists for this model; they all route to the same weights here.
VARIANT_SUFFIXES = ("", ":free", ":nitro", ":floor")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the HTTP layer needs to know that is not the engine itself."""

    served_model_name: str = BASE_MODEL_ID
    api_key_hashes: frozenset[str] = frozenset()  # digests of accepted keys (api/keys.py); empty = open
    management_key_hashes: frozenset[str] = frozenset()  # digests of management keys from a file
    prompt_price_per_m: float = 0.06  # USD per million prompt tokens
    completion_price_per_m: float = 0.33  # USD per million completion tokens (reasoning included)
    provider_name: str = "gemmaserve"
    keepalive_interval_s: float = 10.0  # `: OPENROUTER PROCESSING` cadence while waiting for a token
    max_body_bytes: int = 8 * 1024 * 1024
    max_stored_generations: int = 10_000
    quantization: str | None = None  # reported on the endpoints listing
    max_completion_tokens: int | None = 32768  # advertised in /models top_provider
    # Response cache (X-OpenRouter-Cache): bounded in entries and bytes, least recently used out first.
    response_cache_entries: int = 1024
    response_cache_bytes: int = 64 * 1024 * 1024
    # Media in chat messages (README "Images and video"): remote http(s) URLs are fetched only when
    # the operator allows it; at most this many images + videos per request.
    allow_remote_media: bool = False
    max_media_per_request: int = 8
    max_media_bytes: int = 20 * 2**20  # one image or remote fetch (videos: 2.5x, their own limit)
    max_video_seconds: float = 60.0  # OpenRouter's "up to 60s" for this model
    max_video_frames: int = 64  # sampled frames per video
    # Batches (/api/beta/batches): billed at this share of the list price (OpenRouter: about half),
    # at most this many items per batch, and this many items in the engine at once, all batches together.
    batch_price_factor: float = 0.5
    batch_max_requests: int = 10_000
    batch_concurrency: int = 8
    # Request preparation (template, tokenizer, grammar compiler) runs in this many threads, with
    # at most prep_queue requests waiting (then 503) and a time limit per request (then 400).
    prep_workers: int = 4
    prep_queue: int = 64
    prep_time_limit_s: float = 10.0
    # Slow clients: a request's headers must arrive within header_timeout_s of its first byte and
    # its body within body_timeout_s of the headers (then 408); idle kept-alive connections close
    # after keepalive_timeout_s. Beyond max_connections open sockets new ones are closed at once,
    # beyond max_concurrent_requests requests in flight the next gets a 503.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 2048
    max_concurrent_requests: int = 512

    def __post_init__(self) -> None:
        if self.keepalive_interval_s <= 0:
            raise ValueError("keepalive_interval_s must be positive")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.prompt_price_per_m < 0 or self.completion_price_per_m < 0:
            raise ValueError("prices must be non-negative")
        if not 0 <= self.batch_price_factor <= 1:
            raise ValueError("batch_price_factor must be within [0, 1]")
        if self.batch_concurrency <= 0 or self.batch_max_requests <= 0:
            raise ValueError("batch_concurrency and batch_max_requests must be positive")
        for name in ("prep_time_limit_s", "header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if min(self.prep_workers, self.max_connections, self.max_concurrent_requests) < 1 or self.prep_queue < 0:
            raise ValueError("prep_workers, max_connections and max_concurrent_requests must be >= 1, prep_queue >= 0")

    @property
    def accepted_model_ids(self) -> frozenset[str]:
        ids = {self.served_model_name}
        for base in (BASE_MODEL_ID, CANONICAL_SLUG):
            ids.update(base + s for s in VARIANT_SUFFIXES)
        return frozenset(ids)

    @property
    def response_model(self) -> str:
        # OpenRouter answers with the dated permaslug for this model (spec §3.1); a custom served
        # name is echoed as is, since no permaslug exists for it.
        if self.served_model_name == BASE_MODEL_ID:
            return CANONICAL_SLUG
        return self.served_model_name

    def response_model_for(self, requested: str | None) -> str:
        """The `model` a response names for the id a request chose: the permaslug (or custom name)
        with the request's variant suffix kept, as OpenRouter answers `...-20260403:free` to a
        `...:free` request (spec §3.1)."""
        suffix = next((s for s in VARIANT_SUFFIXES[1:] if requested and requested.endswith(s)), "")
        return self.response_model + suffix


def default_data_dir() -> str:
    """Where the embedded SQLite store lives unless --data-dir says otherwise:
    $GEMMASERVE_DATA_DIR, else $XDG_DATA_HOME/gemmaserve, else ~/.local/share/gemmaserve."""
    explicit = os.environ.get("GEMMASERVE_DATA_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "gemmaserve")


# The environment variable `serve` reads its bearer key from, so the key stays out of the process
# list (`--api-key KEY` shows in `ps`).
API_KEY_ENV = "GEMMASERVE_API_KEY"


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The key in GEMMASERVE_API_KEY, or None when unset or blank (this module alone reads env vars)."""
    value = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
    return value or None
