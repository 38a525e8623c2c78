"""gemmaserve.config: validation of cache/scheduler/engine settings and flat-kwargs construction."""

import pytest
import torch

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig, engine_config_from_kwargs, parse_dtype


def test_defaults_and_dtypes():
    cfg = EngineConfig(model="m")
    assert cfg.torch_dtype is torch.bfloat16 and cfg.kv_torch_dtype is torch.bfloat16
    assert cfg.cache.block_size == 16 and cfg.cache.enable_prefix_caching
    assert EngineConfig(dtype="float32", cache=CacheConfig(kv_dtype="fp16")).kv_torch_dtype is torch.float16
    assert parse_dtype("BF16") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        EngineConfig(dtype="int3")


def test_max_model_len_resolution():
    assert EngineConfig().resolve_max_model_len(262_144) == 8192  # CPU default
    assert EngineConfig().resolve_max_model_len(4096) == 4096
    assert EngineConfig(max_model_len=1000).resolve_max_model_len(4096) == 1000
    with pytest.raises(ValueError, match="exceeds"):
        EngineConfig(max_model_len=5000).resolve_max_model_len(4096)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CacheConfig(block_size=12),
        lambda: CacheConfig(num_blocks={"full_attention": 0}),
        lambda: CacheConfig(memory_bytes=0),
        lambda: SchedulerConfig(max_num_seqs=0),
        lambda: SchedulerConfig(max_num_batched_tokens=0),
        lambda: SchedulerConfig(long_prefill_chunk=0),
        lambda: EngineConfig(max_model_len=0),
        lambda: EngineConfig(quantization="gptq"),
    ],
)
def test_invalid_values_raise(make):
    with pytest.raises(ValueError):
        make()


def test_prefill_chunk_is_capped_by_budget():
    assert SchedulerConfig(max_num_batched_tokens=512).prefill_chunk == 512
    assert SchedulerConfig(max_num_batched_tokens=512, long_prefill_chunk=128).prefill_chunk == 128
    assert SchedulerConfig(max_num_batched_tokens=512, long_prefill_chunk=4096).prefill_chunk == 512


def test_engine_config_from_kwargs_routes_each_option():
    cfg = engine_config_from_kwargs(
        model="m", dtype="float32", max_model_len=64, block_size=8, enable_prefix_caching=False,
        kv_cache_memory_bytes=1 << 20, max_num_seqs=3, max_num_batched_tokens=100, max_waiting=5,
    )
    assert (cfg.model, cfg.dtype, cfg.max_model_len) == ("m", "float32", 64)
    assert cfg.cache == CacheConfig(block_size=8, enable_prefix_caching=False, memory_bytes=1 << 20)
    assert cfg.scheduler == SchedulerConfig(max_num_seqs=3, max_num_batched_tokens=100, max_waiting=5)
    with pytest.raises(TypeError, match="unknown engine option 'gpu_memory'"):
        engine_config_from_kwargs(gpu_memory=0.9)
