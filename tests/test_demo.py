"""Tests for gemmaserve.demo: files of each size, parameter counts, transformers compatibility."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from gemmaserve.demo import (
    SIZES,
    TEXT_PREFIX,
    count_params,
    demo_config,
    text_tensor_shapes,
    vision_tensor_shapes,
    write_demo_model,
)
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TOKEN_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
               "chat_template.jinja"}


def _hf_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of transformers' own model for our config.json, built on the meta device."""
    cfg = transformers.Gemma4Config.from_dict(demo_config(size))
    with torch.device("meta"):
        model = transformers.Gemma4ForConditionalGeneration(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}


@pytest.mark.parametrize("size", SIZES)
def test_tensor_table_matches_transformers_model(size):
    raw = demo_config(size)
    cfg = Gemma4TextConfig.from_dict(raw)
    ours = {TEXT_PREFIX + k: v for k, v in text_tensor_shapes(cfg).items()}
    ours.update(vision_tensor_shapes(raw["vision_config"], cfg.hidden_size))
    assert ours == _hf_shapes(size)


def test_parameter_counts():
    counts = {s: count_params(Gemma4TextConfig.from_dict(demo_config(s))) for s in SIZES}
    # The real model (spec §9): 25.233B text, 3.82B active.
    assert round(counts["26b-a4b"][0] / 1e6) == 25233 and round(counts["26b-a4b"][1] / 1e7) == 382
    # The bench shape of specs/environment.md: 707M total, 178M active, within 2%.
    total, active = counts["bench"]
    assert abs(total / 707e6 - 1) < 0.02 and abs(active / 178e6 - 1) < 0.02
    assert counts["tiny"] == (641_590, 420_406)
    assert counts["small"] == (14_161_126, 7_083_238)
    assert counts["bench"] == (706_188_172, 177_705_868)


def test_configs_have_the_requested_geometry():
    tiny = Gemma4TextConfig.from_dict(demo_config("tiny"))
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.sliding_window, tiny.vocab_size) == (64, 6, 16, 512)
    assert tiny.layer_types.index("full_attention") == 5
    assert (tiny.head_dim, tiny.num_key_value_heads, tiny.global_head_dim, tiny.num_global_key_value_heads) == (32, 2, 64, 1)
    assert tiny.attention_k_eq_v and (tiny.num_experts, tiny.top_k_experts, tiny.moe_intermediate_size) == (8, 2, 32)
    bench = Gemma4TextConfig.from_dict(demo_config("bench"))
    assert [i for i, t in enumerate(bench.layer_types) if t == "full_attention"] == [5, 11]
    assert (bench.hidden_size, bench.num_experts, bench.top_k_experts, bench.vocab_size) == (1024, 32, 4, 32768)
    real = Gemma4TextConfig.from_dict(demo_config("26b-a4b"))
    assert [i for i, t in enumerate(real.layer_types) if t == "full_attention"] == [5, 11, 17, 23, 29]
    assert real.eos_token_ids == (1, 106) and real.multimodal


def test_tiny_files_and_transformers_load(tmp_path):
    d = write_demo_model(tmp_path / "tiny", "tiny", seed=3)
    assert {p.name for p in d.iterdir()} == TOKEN_FILES | {"model.safetensors"}
    model, info = transformers.Gemma4ForConditionalGeneration.from_pretrained(
        str(d), dtype=torch.bfloat16, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    sd = model.state_dict()
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert f.metadata() == {"format": "pt"}
        for name in names:
            assert torch.equal(f.get_tensor(name), sd[name]), name
    assert any(n.startswith("model.vision_tower.") for n in names)
    assert "model.embed_vision.embedding_projection.weight" in names
    assert model.config.text_config.final_logit_softcapping == 30.0
    assert model.config.text_config.hidden_size_per_layer_input in (0, None)
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 106, 50] and gen["top_k"] == 64
    assert json.loads((d / "config.json").read_text())["eos_token_id"] == [1, 106]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_demo_model(tmp_path / "a", "tiny", seed=1)
    b = write_demo_model(tmp_path / "b", "tiny", seed=1)
    c = write_demo_model(tmp_path / "c", "tiny", seed=2)
    for name in TOKEN_FILES | {"model.safetensors"}:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_forced_sharding_writes_an_index_that_transformers_loads(tmp_path):
    d = write_demo_model(tmp_path / "sh", "tiny", shard_bytes=300_000)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (d / "model.safetensors").exists()
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    total = 0
    for fname in files:
        with safe_open(str(d / fname), "pt") as f:
            for name in f.keys():
                assert index["weight_map"][name] == fname
                t = f.get_tensor(name)
                total += t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == total
    _, info = transformers.Gemma4ForConditionalGeneration.from_pretrained(str(d), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_small_loads_in_transformers_and_tokenizes_control_ids(tmp_path):
    d = write_demo_model(tmp_path / "small", "small")
    _, info = transformers.Gemma4ForConditionalGeneration.from_pretrained(str(d), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = Tokenizer.from_dir(d)
    assert tok.vocab_size == 4096
    assert tok.encode("<|turn>model\n<|tool_call><|\"|>")[0] == 105
    assert tok.encode("<|turn>model\n<|tool_call><|\"|>")[-2:] == [48, 52]
    assert tok.marker_id("image_token") == 4096 - 5
    ref = transformers.AutoTokenizer.from_pretrained(str(d))
    assert ref.image_token_id == tok.marker_id("image_token")


def test_26b_writes_config_and_tokenizer_but_no_weights(tmp_path):
    d = write_demo_model(tmp_path / "big", "26b-a4b")
    assert {p.name for p in d.iterdir()} == TOKEN_FILES
    raw = json.loads((d / "config.json").read_text())
    assert raw["image_token_id"] == 258880 and raw["boi_token_id"] == 255999 and raw["video_token_id"] == 258884
    tok = Tokenizer.from_dir(d)
    assert tok.vocab_size == 262144
    assert [tok.marker_id(n) for n in ("image_start", "audio_start", "image_token", "video_token")] == [
        255999, 256000, 258880, 258884]
    assert tok.turn_start == 105 and tok.think == 98


def test_tiny_loads_quickly_in_our_tokenizer(tmp_path):
    # No timing assertion: this just proves the tiny model's files are self-contained.
    d = write_demo_model(tmp_path / "t", "tiny")
    tok = Tokenizer.from_dir(d)
    assert tok.decode(tok.encode("Hello, world!")) == "Hello, world!"


def test_unknown_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown demo size"):
        write_demo_model(tmp_path / "x", "huge")


def test_demo_processor_config_loads_in_transformers(tmp_path):
    """The demo's processor_config.json is the real layout: transformers' PIL processor reads its budget."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    d = write_demo_model(tmp_path / "p", "tiny", write_weights=False)
    cfg = json.loads((d / "processor_config.json").read_text())
    proc = Gemma4ImageProcessorPil(**{k: v for k, v in cfg["image_processor"].items() if k != "image_processor_type"})
    assert proc.max_soft_tokens == 280 and cfg["video_processor"]["max_soft_tokens"] == 70
