"""`generate` and `serve` share their engine options and map them to the same EngineConfig."""

from gemmaserve.cli import build_parser
from gemmaserve.config import engine_config_from_args

ENGINE = ["--model", "m", "--dtype", "float32", "--max-model-len", "512", "--quantization", "int8",
          "--block-size", "32", "--max-num-batched-tokens", "256", "--kv-cache-memory-gb", "0.5",
          "--no-prefix-caching", "--dummy-weights"]


def test_generate_and_serve_map_engine_options_alike():
    parser = build_parser()
    gen = parser.parse_args(["generate", "--prompt", "p", *ENGINE])
    srv = parser.parse_args(["serve", *ENGINE, "--max-num-seqs", "5", "--max-waiting", "7", "--seed", "3"])
    a = engine_config_from_args(gen, max_num_seqs=1)
    b = engine_config_from_args(srv, model="/resolved/m", seed=srv.seed, max_num_seqs=srv.max_num_seqs,
                                max_waiting=srv.max_waiting)
    for cfg in (a, b):
        assert (cfg.dtype, cfg.max_model_len, cfg.quantization, cfg.dummy_weights) == ("float32", 512, "int8", True)
        assert (cfg.cache.block_size, cfg.cache.memory_bytes, cfg.cache.enable_prefix_caching) == (32, 1 << 29, False)
        assert cfg.scheduler.max_num_batched_tokens == 256
    assert (a.model, a.scheduler.max_num_seqs, a.seed) == ("m", 1, 0)
    assert (b.model, b.scheduler.max_num_seqs, b.scheduler.max_waiting, b.seed) == ("/resolved/m", 5, 7, 3)


def test_defaults_leave_the_cache_to_the_device():
    args = build_parser().parse_args(["serve", "--model", "m"])
    cfg = engine_config_from_args(args)
    assert (cfg.dtype, cfg.device, cfg.cache.memory_bytes, cfg.cache.enable_prefix_caching) == ("bfloat16", "cpu", None, True)
    assert (args.host, args.port, args.max_num_seqs, args.max_waiting) == ("127.0.0.1", 8000, 32, 256)
