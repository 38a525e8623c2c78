"""Images and video over HTTP with the official openai client against a real uvicorn server and the
real AsyncEngine on the tiny (multimodal) demo model: data URLs, detail and mm_processor_kwargs
budgets, soft tokens in prompt_tokens, /models modalities, and a 400 naming the field for every bad
media input."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from api_support import ServerThread, make_state
from PIL import Image

from gemmaserve.api.app import create_app
from gemmaserve.media.image import soft_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "media"))
from test_video import make_clip  # noqa: E402

MODEL = "google/gemma-4-26b-a4b-it"


@pytest.fixture(scope="module")
def real(demo_dir):
    from gemmaserve.config import EngineConfig
    from gemmaserve.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(EngineConfig(model=str(demo_dir), dtype="float32", max_model_len=4096))
    state = make_state(engine.tokenizer, engine, keepalive_interval_s=0.5, max_media_per_request=3,
                       max_video_seconds=1.5, max_video_frames=20)
    with ServerThread(create_app(state)) as srv:
        srv.engine, srv.state = engine, state
        srv.client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
        yield srv
    import asyncio

    asyncio.run(engine.shutdown())


def png_url(w: int, h: int, seed: int = 0, fmt: str = "PNG") -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buf, format=fmt)
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}[fmt]
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def video_url(frames: int = 8) -> str:
    return "data:video/mp4;base64," + base64.b64encode(make_clip(frames, w=320, h=180)).decode()


def ask(real, content, **kw):
    return real.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                               max_tokens=kw.pop("max_tokens", 4), temperature=0, **kw)


def test_models_advertise_image_and_video(real):
    m = httpx.get(real.url + "/models").json()["data"][0]
    assert m["architecture"]["input_modalities"] == ["text", "image", "video"]
    assert m["architecture"]["modality"] == "text+image+video->text"
    assert httpx.get(real.url + "/models", params={"input_modalities": "video"}).json()["total_count"] == 1
    ep = httpx.get(real.url + f"/models/{MODEL}/endpoints").json()["data"]
    assert ep["architecture"]["input_modalities"] == ["text", "image", "video"]


def test_image_soft_tokens_count_in_prompt_tokens(real):
    text_only = ask(real, [{"type": "text", "text": "Describe"}])
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        resp = ask(real, [{"type": "text", "text": "Describe"},
                          {"type": "image_url", "image_url": {"url": png_url(200, 150, 1, fmt)}}])
        n = soft_tokens(150, 200, 280)
        assert resp.usage.prompt_tokens == text_only.usage.prompt_tokens + n + 2, fmt
        assert resp.choices[0].finish_reason == "length"


def test_detail_and_mm_processor_kwargs_pick_the_budget(real):
    url = png_url(1024, 768, 2)
    low = ask(real, [{"type": "image_url", "image_url": {"url": url, "detail": "low"}}])
    auto = ask(real, [{"type": "image_url", "image_url": {"url": url}}])
    small = ask(real, [{"type": "image_url", "image_url": {"url": url}}],
                extra_body={"mm_processor_kwargs": {"max_soft_tokens": 70}})
    assert auto.usage.prompt_tokens - low.usage.prompt_tokens == 266 - 63  # spec 8.6 table
    assert small.usage.prompt_tokens == low.usage.prompt_tokens
    assert small.choices[0].message.content == low.choices[0].message.content


def test_images_anywhere_and_stream_matches_whole(real):
    content = [{"type": "image_url", "image_url": {"url": png_url(90, 120, 3)}},
               {"type": "text", "text": "between"},
               {"type": "image_url", "image_url": {"url": png_url(120, 90, 4), "detail": "low"}},
               {"type": "text", "text": "after"}]
    whole = ask(real, content, max_tokens=6)
    chunks = list(real.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (whole.choices[0].message.content or "")
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_video_url_and_input_video_alias(real):
    url = video_url(8)
    text_only = ask(real, [{"type": "text", "text": "Watch"}])
    resp = ask(real, [{"type": "text", "text": "Watch"}, {"type": "video_url", "video_url": {"url": url}}])
    # 8 frames of 66 tokens, each with boi/eoi and its "00:00 " timestamp text around it.
    assert resp.usage.prompt_tokens > text_only.usage.prompt_tokens + 8 * (66 + 2)
    alias = ask(real, [{"type": "text", "text": "Watch"}, {"type": "input_video", "input_video": {"url": url}}])
    assert alias.usage.prompt_tokens == resp.usage.prompt_tokens
    assert alias.choices[0].message.content == resp.choices[0].message.content


def _error(real, content, role="user", **body):
    msgs = [{"role": role, "content": content}] if role == "user" else [
        {"role": "user", "content": "hi"}, {"role": role, "content": content}]
    r = httpx.post(real.url + "/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 2, **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    return r.json()["error"]["message"]


def test_bad_media_is_a_400_naming_the_field(real):
    bad_png = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode()
    msg = _error(real, [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": bad_png}}])
    assert msg.startswith("messages[0].content[1].image_url.url:") and "decoded" in msg
    assert "unsupported media type" in _error(real, [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}])
    assert "base64" in _error(real, [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}])
    assert "remote media URLs are disabled" in _error(real, [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    assert "audio" in _error(real, [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}])
    many = [{"type": "image_url", "image_url": {"url": png_url(48, 48, i)}} for i in range(4)]
    assert "at most 3" in _error(real, many)
    assert "max_soft_tokens" in _error(real, [{"type": "image_url", "image_url": {"url": png_url(48, 48)}}],
                                       mm_processor_kwargs={"max_soft_tokens": 100})
    assert "unknown option" in _error(real, [{"type": "image_url", "image_url": {"url": png_url(48, 48)}}],
                                      mm_processor_kwargs={"frames": 3})
    broken_video = "data:video/mp4;base64," + base64.b64encode(b"\x00" * 300).decode()
    msg = _error(real, [{"type": "video_url", "video_url": {"url": broken_video}}])
    assert msg.startswith("messages[0].content[0].video_url.url:")
    long_clip = "data:video/mp4;base64," + base64.b64encode(make_clip(48, fps=24, w=64, h=48)).decode()
    assert "1.5 s limit" in _error(real, [{"type": "video_url", "video_url": {"url": long_clip}}])
    short = "data:video/mp4;base64," + base64.b64encode(make_clip(30, fps=24, w=64, h=48)).decode()
    assert "over the limit of 20" in _error(real, [{"type": "video_url", "video_url": {"url": short}}])
    msg = _error(real, [{"type": "image_url", "image_url": {"url": png_url(48, 48)}}], role="assistant")
    assert "user messages only" in msg
    # None of it harmed the server: a normal request still answers.
    assert ask(real, "still fine").choices[0].finish_reason == "length"
    assert real.engine.engine.encoder_cache.num_pinned == 0


def test_responses_and_messages_take_images(real):
    """The Responses and Anthropic Messages translators feed the same media path."""
    url = png_url(200, 150, 5)
    resp = real.client.responses.create(model=MODEL, max_output_tokens=3, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Describe"},
                                     {"type": "input_image", "image_url": url, "detail": "low"}]}])
    low = ask(real, [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}],
              max_tokens=3)
    assert resp.usage.input_tokens == low.usage.prompt_tokens
    import anthropic

    client = anthropic.Anthropic(base_url=real.root + "/api", api_key="x", max_retries=0)
    msg = client.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": url.split(",", 1)[1]}}]}])
    auto = ask(real, [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": url}}], max_tokens=3)
    assert msg.usage.input_tokens == auto.usage.prompt_tokens
