"""Tests for gemmaserve.model.loader: layouts, sharding, dtypes, errors naming tensors, dummy weights."""

from __future__ import annotations

import json

import pytest
import torch
from loader_batch import OneSeq
from safetensors import safe_open
from safetensors.torch import save_file

import gemmaserve.model.loader as loader_mod
from gemmaserve.demo import TEXT_PREFIX, count_params, demo_config, text_tensor_shapes, write_demo_model
from gemmaserve.model.config import Gemma4TextConfig
from gemmaserve.model.loader import CheckpointError, load_model

IDS = [2, 105, 358, 356, 383, 107, 313, 419, 349, 352, 285, 464, 452, 274, 106, 107, 105, 440, 107]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("ld") / "tiny", "tiny", seed=7)


def _file_tensors(d):
    out = {}
    for p in sorted(d.glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def test_loads_every_text_tensor_exactly_and_skips_vision(tiny):
    model, cfg = load_model(tiny, dtype=torch.bfloat16)
    assert cfg == Gemma4TextConfig.from_file(tiny / "config.json") and cfg.multimodal
    sd = model.state_dict()
    tensors = _file_tensors(tiny)
    text = {k[len(TEXT_PREFIX):]: v for k, v in tensors.items() if k.startswith(TEXT_PREFIX)}
    assert set(text) == set(sd)
    assert any(k.startswith("model.vision_tower.") for k in tensors)
    for name, t in text.items():
        assert sd[name].dtype == torch.bfloat16
        assert torch.equal(sd[name], t), name
    assert not model.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_converts_to_target_dtype(tiny, dtype):
    model, _ = load_model(tiny, dtype=dtype)
    tensors = _file_tensors(tiny)
    for name, p in model.state_dict().items():
        assert p.dtype == dtype, name
        assert torch.equal(p, tensors[TEXT_PREFIX + name].to(dtype)), name


def test_rejects_unknown_dtype_and_quantization(tiny):
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny, dtype=torch.int32)
    with pytest.raises(ValueError, match="quantization"):
        load_model(tiny, quantization="int3")


def test_sharded_equals_single_file(tmp_path, tiny):
    d = write_demo_model(tmp_path / "sh", "tiny", seed=7, shard_bytes=250_000)
    assert len(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    a, _ = load_model(tiny)
    b, _ = load_model(d)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_text_only_layout(tmp_path, tiny):
    """A Gemma4ForCausalLM checkpoint: text_config's keys at top level, tensors under `model.`."""
    d = tmp_path / "textonly"
    d.mkdir()
    raw = json.loads((tiny / "config.json").read_text())
    text = dict(raw["text_config"], architectures=["Gemma4ForCausalLM"], eos_token_id=[1, 106])
    (d / "config.json").write_text(json.dumps(text))
    tensors = {"model." + k[len(TEXT_PREFIX):]: v for k, v in _file_tensors(tiny).items() if k.startswith(TEXT_PREFIX)}
    save_file(tensors, str(d / "model.safetensors"))
    model, cfg = load_model(d)
    ref, _ = load_model(tiny)
    assert not cfg.multimodal
    sa, sb = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _rewrite(src, dst, edit):
    dst.mkdir()
    for f in ("config.json",):
        (dst / f).write_bytes((src / f).read_bytes())
    tensors = _file_tensors(src)
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_missing_tensor_is_named(tmp_path, tiny):
    name = TEXT_PREFIX + "layers.3.experts.down_proj"
    d = _rewrite(tiny, tmp_path / "m", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=r"missing.*layers\.3\.experts\.down_proj"):
        load_model(d)


def test_unexpected_tensor_is_named(tmp_path, tiny):
    def add(t):
        t[TEXT_PREFIX + "layers.2.self_attn.extra.weight"] = torch.zeros(2)
        t["model.something_else.weight"] = torch.zeros(2)

    d = _rewrite(tiny, tmp_path / "u", add)
    with pytest.raises(CheckpointError, match=r"unexpected.*layers\.2\.self_attn\.extra\.weight.*something_else"):
        load_model(d)


def test_full_layer_v_proj_is_unexpected(tmp_path, tiny):
    # K=V full layers have no v_proj: a checkpoint that carries one does not match its config.
    d = _rewrite(tiny, tmp_path / "v", lambda t: t.__setitem__(TEXT_PREFIX + "layers.5.self_attn.v_proj.weight", torch.zeros(64, 64)))
    with pytest.raises(CheckpointError, match=r"layers\.5\.self_attn\.v_proj\.weight"):
        load_model(d)


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path, tiny):
    name = TEXT_PREFIX + "layers.1.self_attn.k_proj.weight"
    d = _rewrite(tiny, tmp_path / "s", lambda t: t.__setitem__(name, torch.zeros(32, 64)))
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.k_proj\.weight.*\[32, 64\].*\[64, 64\]"):
        load_model(d)


def test_no_weights_and_missing_shard_are_errors(tmp_path, tiny):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "config.json").write_bytes((tiny / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors"):
        load_model(d)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_reads_each_tensor_once_memory_mapped(tiny, monkeypatch):
    """No whole-file load and no float32 staging: every tensor is fetched once, in its stored dtype,
    through safe_open, and copied straight into the model (float32 target included)."""
    real = loader_mod.safe_open
    fetched = []

    class Spy:
        def __init__(self, *a, **kw):
            self._f = real(*a, **kw)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._f.keys()

        def get_slice(self, k):
            return self._f.get_slice(k)

        def get_tensor(self, k):
            t = self._f.get_tensor(k)
            fetched.append((k, t.dtype))
            return t

    monkeypatch.setattr(loader_mod, "safe_open", Spy)
    monkeypatch.setattr("safetensors.torch.load_file", lambda *a, **k: pytest.fail("whole-file load"))
    model, _ = load_model(tiny, dtype=torch.float32)
    names = [k for k, _ in fetched]
    assert len(names) == len(set(names)) == len(model.state_dict())
    assert all(dt == torch.bfloat16 for _, dt in fetched)
    assert not any(k.startswith("model.vision_tower.") for k in names)


def test_logits_match_transformers(tiny):
    transformers = pytest.importorskip("transformers")
    ref = transformers.Gemma4ForConditionalGeneration.from_pretrained(str(tiny), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([IDS])).logits[0].float()  # [T, V]
    model, _ = load_model(tiny, dtype=torch.float32)
    got = OneSeq(model).step(IDS, all_logits=True)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_dummy_weights_read_only_config(tmp_path):
    d = write_demo_model(tmp_path / "dw", "tiny", write_weights=False)
    assert not list(d.glob("*.safetensors"))
    a, cfg = load_model(d, dummy_weights=True, seed=3)
    b, _ = load_model(d, dummy_weights=True, seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) and torch.isfinite(sa[k]).all() for k in sa)
    logits = OneSeq(a).step(IDS)
    assert logits.shape == (1, cfg.vocab_size) and torch.isfinite(logits).all()


def test_dummy_weights_real_26b_shape_on_meta(tmp_path):
    d = write_demo_model(tmp_path / "big", "26b-a4b")
    model, cfg = load_model(d, dummy_weights=True, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == text_tensor_shapes(cfg)
    assert sum(p.numel() for p in model.parameters()) + cfg.num_hidden_layers == count_params(cfg)[0] == 25_233_141_790
    assert all(p.device.type == "meta" for p in model.parameters())
    assert shapes["layers.5.self_attn.k_proj.weight"] == (1024, 2816)
    assert "layers.5.self_attn.v_proj.weight" not in shapes
    assert cfg == Gemma4TextConfig.from_dict(demo_config("26b-a4b"))
