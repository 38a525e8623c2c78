"""Images and video through the engine on the tiny demo checkpoint (fp32): greedy tokens and logprobs
equal transformers' with chunked prefill and the paged cache; encoder cache reuse on repeats,
preemption and prefix hits; chunks never split a span; no pin or block left on any exit path; text
requests keep decoding while an image is encoded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.engine.engine import Engine
from gemmaserve.media.image import image_input
from gemmaserve.media.video import frames_from_arrays, video_input
from gemmaserve.model.config import FULL, SLIDING
from gemmaserve.model.loader import load_vision
from gemmaserve.types import FinishReason, InvalidRequestError, SamplingParams

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tiny_fp32):
    path, model, config, tok = tiny_fp32
    return path, model, config, tok, load_vision(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def ref(tiny):
    return transformers.Gemma4ForConditionalGeneration.from_pretrained(str(tiny[0]), dtype=torch.float32).eval()


def make_engine(tiny, budget=256, chunk=None, prefix=True, blocks=256, slice_rows=512):
    path, model, config, tok, vision = tiny
    cfg = EngineConfig(
        model=str(path), dtype="float32", max_model_len=min(512, blocks * 4), encoder_slice_rows=slice_rows,
        cache=CacheConfig(block_size=4, num_blocks={SLIDING: blocks, FULL: blocks}, enable_prefix_caching=prefix),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget, long_prefill_chunk=chunk),
    )
    return Engine(model, config, cfg, tok, vision=vision)


def picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def image_media(w, h, seed, budget=70):
    img = picture(w, h, seed)
    return image_input(img, budget, hashlib.sha256(img.tobytes()).digest())


def prompt_ids(tok, parts, cfg):
    """parts: str (text) or MediaInput; images expand to boi + soft*N + eoi, videos per frame."""
    ids = [tok.bos_token_id]
    for p in parts:
        if isinstance(p, str):
            ids += tok.encode(p)
        elif p.kind == "image":
            ids += [cfg["boi_token_id"]] + [cfg["image_token_id"]] * p.tokens_per_frame + [cfg["eoi_token_id"]]
        else:
            for i, ts in enumerate(p.timestamps):
                ids += tok.encode((" " if i else "") + ts + " ")
                ids += [cfg["boi_token_id"]] + [cfg["video_token_id"]] * p.tokens_per_frame + [cfg["eoi_token_id"]]
    return ids


def raw_config(tiny):
    import json

    return json.loads((tiny[0] / "config.json").read_text())


def hf_greedy(ref, ids, media, cfg, n, suppress=()):
    """Greedy tokens and their logprobs by full recomputation with transformers (one forward per token);
    `suppress` ids are never chosen (generation_config's suppress_tokens, as our sampler does)."""
    images = [m for m in media if m.kind == "image"]
    videos = [m for m in media if m.kind == "video"]
    kw = {}
    if images:
        width = max(m.pixel_values.shape[1] for m in images)
        kw["pixel_values"] = torch.stack([torch.nn.functional.pad(m.pixel_values[0], (0, 0, 0, width - m.pixel_values.shape[1])) for m in images])
        kw["image_position_ids"] = torch.stack([torch.nn.functional.pad(m.position_ids[0], (0, 0, 0, width - m.position_ids.shape[1]), value=-1) for m in images])
    if videos:
        kw["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos])
        kw["video_position_ids"] = torch.cat([v.position_ids for v in videos])
        kw["num_frames_per_video"] = torch.tensor([v.num_frames for v in videos])
    kinds = {cfg["image_token_id"]: 1, cfg["video_token_id"]: 2}
    ids = list(ids)
    out, lps = [], []
    for _ in range(n):
        mm = torch.tensor([[kinds.get(t, 0) for t in ids]])
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([ids]), mm_token_type_ids=mm, **kw).logits[0, -1].float()
        masked = logits.clone()
        masked[list(suppress)] = float("-inf")
        tok = int(masked.argmax())
        lps.append(float(torch.log_softmax(logits, -1)[tok]))
        out.append(tok)
        ids.append(tok)
    return out, lps


def run(engine, reqs, max_steps=500):
    finals = {}
    for rid, ids, params, media in reqs:
        engine.add_request(rid, ids, params, media)
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        steps += 1
        assert steps < max_steps
    return finals


def greedy(n):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=0)


def one_slice_per_step(engine):
    """Pin the encoder's time budget to one slice per step while other requests run (the engine gives
    it about one model step's time; a fixed count keeps these tests free of timing)."""
    run_ = engine.media_encoder.run
    engine.media_encoder.run = lambda reqs, deadline: run_(reqs, 0.0 if deadline is not None else None)


def clean(engine):
    pools_free = all(p.num_free == p.num_blocks for p in engine.kv.pools.values())
    return pools_free and engine.encoder_cache.num_pinned == 0


@pytest.mark.parametrize("budget, chunk", [(256, None), (96, 24)])
def test_images_match_transformers(tiny, ref, budget, chunk):
    """Text before, between and after two images (one longer than the 16-token window); with a small
    budget the prompt is prefilled in chunks that stop at span edges."""
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    a, b = image_media(1024, 768, 1), image_media(100, 160, 2)
    ids = prompt_ids(tok, ["Look at this:", a, "and this one", b, "What differs?"], cfg)
    want, want_lp = hf_greedy(ref, ids, [a, b], cfg, 6, tok.suppress_token_ids)
    engine = make_engine(tiny, budget=budget, chunk=chunk)
    out = run(engine, [("r", ids, greedy(6), [a, b])])["r"]
    assert out.token_ids == want
    np.testing.assert_allclose([lp.logprob for lp in out.logprobs], want_lp, atol=1e-4)
    assert clean(engine)


def test_video_matches_transformers(tiny, ref):
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    frames = frames_from_arrays([np.asarray(picture(320, 180, 10 + i)) for i in range(3)])
    vid = video_input(frames, [0, 12, 24], 24.0, 70, b"clip")
    ids = prompt_ids(tok, ["Watch:", vid, "Describe."], cfg)
    want, want_lp = hf_greedy(ref, ids, [vid], cfg, 4, tok.suppress_token_ids)
    engine = make_engine(tiny, budget=80, chunk=40)  # one frame (66 tokens) per chunk at most
    out = run(engine, [("v", ids, greedy(4), [vid])])["v"]
    assert out.token_ids == want
    np.testing.assert_allclose([lp.logprob for lp in out.logprobs], want_lp, atol=1e-4)
    assert clean(engine)


def test_repeat_and_prefix_hit_reuse_embeddings(tiny):
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    a = image_media(300, 200, 3)
    ids = prompt_ids(tok, ["Describe", a, "please, in detail."], cfg)
    engine = make_engine(tiny)
    first = run(engine, [("1", ids, greedy(3), [a])])["1"]
    encoded = engine.media_encoder.encoded_frames
    assert encoded == 1
    second = run(engine, [("2", ids, greedy(3), [a])])["2"]
    assert second.token_ids == first.token_ids
    assert second.num_cached_tokens > a.tokens_per_frame  # the prefix cache covered the image
    assert engine.media_encoder.encoded_frames == encoded  # ... and the encoder ran no more
    # The same tokens with other pixels: the image's blocks hash differently (no hit past it).
    c = image_media(300, 200, 4)
    third = run(engine, [("3", ids, greedy(3), [c])])["3"]
    assert third.num_cached_tokens <= ids.index(cfg["image_token_id"])
    assert engine.media_encoder.encoded_frames == encoded + 1
    assert clean(engine)


def test_chunks_never_split_a_span(tiny):
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    a = image_media(1024, 768, 5)  # 63 soft tokens
    ids = prompt_ids(tok, ["x", a, "y"], cfg)
    engine = make_engine(tiny, budget=128, chunk=10)
    engine.add_request("r", ids, greedy(2), [a])
    req = engine.scheduler.requests["r"]
    span = req.mm_spans[0]
    edges = []
    while engine.has_unfinished_requests():
        before = req.num_computed_tokens
        engine.step()
        edges.append((before, req.num_computed_tokens))
    for lo, hi in edges:
        assert not (lo < span.start < hi < span.end) and not (span.start < lo < span.end)
    assert clean(engine)


def test_preemption_reuses_embeddings_and_frees_everything(tiny):
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    a, b = image_media(200, 200, 6), image_media(220, 180, 7)
    reqs = [(f"p{i}", prompt_ids(tok, ["hi", m, "go"], cfg), greedy(24), [m]) for i, m in enumerate([a, b, a])]
    roomy = run(make_engine(tiny), reqs)
    engine = make_engine(tiny, blocks=48)  # too few blocks for all three: preemptions
    tight = run(engine, reqs)
    assert engine.scheduler.num_preemptions > 0
    assert {k: v.token_ids for k, v in tight.items()} == {k: v.token_ids for k, v in roomy.items()}
    assert engine.media_encoder.encoded_frames == 2  # a once (shared), b once, never again after preemption
    assert clean(engine)


def test_abort_and_errors_leave_nothing(tiny):
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    a = image_media(640, 480, 8)
    ids = prompt_ids(tok, ["a", a, "b"], cfg)
    engine = make_engine(tiny, slice_rows=16)
    one_slice_per_step(engine)
    engine.add_request("t", prompt_ids(tok, ["text only"], cfg), greedy(50), None)
    engine.step()
    engine.add_request("i", ids, greedy(5), [a])
    engine.step()  # the encoder is mid-image (a text request is decoding beside it)
    assert engine.media_encoder.job is not None
    engine.abort("i")
    engine.abort("t")
    engine.step()
    assert engine.media_encoder.job is None and clean(engine)
    with pytest.raises(InvalidRequestError, match="do not match"):
        engine.make_request("bad", ids, greedy(2), [image_media(100, 100, 9)])
    with pytest.raises(InvalidRequestError, match="without a media input"):
        engine.make_request("bad", ids, greedy(2), [])
    with pytest.raises(InvalidRequestError, match="end with media"):
        engine.make_request("bad", ids[: ids.index(cfg["eoi_token_id"])], greedy(2), [a])


def test_text_keeps_decoding_while_an_image_encodes(tiny):
    """With small encoder slices the text request gets a token every step while the image is encoded."""
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    a = image_media(1024, 768, 11)
    engine = make_engine(tiny, slice_rows=9)
    one_slice_per_step(engine)
    engine.add_request("t", prompt_ids(tok, ["Tell me a story"], cfg), greedy(40), None)
    engine.step()
    engine.add_request("i", prompt_ids(tok, ["see", a, "now"], cfg), greedy(2), [a])
    req = engine.scheduler.requests["i"]
    steps_while_encoding = tokens = 0
    while not all(req.mm_ready):
        outs = engine.step()
        steps_while_encoding += 1
        tokens += sum(len(o.new_token_ids) for o in outs if o.request_id == "t")
    assert steps_while_encoding > 3  # the encode was spread over several steps ...
    assert tokens >= steps_while_encoding - 1  # ... and the text request decoded in each of them
    run(engine, [])
    assert clean(engine)


def test_text_only_model_refuses_media(tiny_fp32):
    path, model, config, tok = tiny_fp32
    engine = Engine(model, config, EngineConfig(model=str(path), dtype="float32", max_model_len=256,
                                                cache=CacheConfig(block_size=4, num_blocks={SLIDING: 64, FULL: 64})), tok)
    with pytest.raises(InvalidRequestError, match="no vision tower"):
        engine.make_request("x", [2, 5, 6], greedy(2), [image_media(50, 50, 1)])
    assert FinishReason.STOP  # keep the import meaningful for readers of failures


def test_text_request_is_not_queued_behind_an_encoding_image(tiny):
    """An image request waiting for its encoder does not hold up a text request that arrives after it."""
    _, _, _, tok, _ = tiny
    cfg = raw_config(tiny)
    a = image_media(1024, 768, 12)
    engine = make_engine(tiny, slice_rows=9)
    one_slice_per_step(engine)
    engine.add_request("i", prompt_ids(tok, [a, "now"], cfg), greedy(2), [a])
    engine.add_request("t", prompt_ids(tok, ["plain text"], cfg), greedy(3), None)
    req = engine.scheduler.requests["i"]
    first_text_token_step = None
    step = 0
    while not all(req.mm_ready):
        outs = engine.step()
        step += 1
        if first_text_token_step is None and any(o.request_id == "t" and o.new_token_ids for o in outs):
            first_text_token_step = step
    assert first_text_token_step is not None  # the text request produced tokens while the image encoded
    run(engine, [])
    assert clean(engine)
