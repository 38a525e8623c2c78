"""context-compression (plugin or `transforms: ["middle-out"]`): a prompt over the context loses
its middle instead of getting the context-length 400 (fake engine, max_model_len 512)."""

from __future__ import annotations

import httpx
import pytest

from gemmaserve.chat import ChatRenderer

MODEL = "google/gemma-4-26b-a4b-it"
LONG = [{"role": "system", "content": "Keep me."}] + [
    {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "many words here " * 12}
    for i in range(15)] + [{"role": "user", "content": "The last question?"}]


@pytest.mark.parametrize("extra", [{"transforms": ["middle-out"]},
                                   {"plugins": [{"id": "context-compression", "engine": "middle-out"}]}])
def test_long_chat_loses_its_middle_and_fits(fake, demo_tokenizer, extra):
    renderer = ChatRenderer(demo_tokenizer.chat_template)
    assert len(demo_tokenizer.encode(renderer.render(LONG))) > 512  # over the context as sent
    plain = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": LONG, "max_tokens": 4})
    assert plain.status_code == 400 and plain.json()["error"]["metadata"]["error_type"] == "context_length_exceeded"
    r = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": LONG, "max_tokens": 4, **extra})
    assert r.status_code == 200, r.text
    ids = fake.engine.calls[-1].prompt_ids
    assert len(ids) < 512 and r.json()["usage"]["prompt_tokens"] == len(ids)
    text = demo_tokenizer.decode(ids)
    assert "Keep me." in text and "The last question?" in text and "turn 0:" in text and "turn 14:" in text
    assert "turn 7:" not in text  # the middle went
    # It is exactly the render of the surviving messages: whole turns, nothing cut inside one.
    kept = [m for m in LONG if m["content"].split(":")[0] + ":" in text or m["content"] in text]
    assert ids == demo_tokenizer.encode(renderer.render(kept))


def test_chat_that_cannot_fit_is_still_the_context_400(fake):
    huge = [{"role": "user", "content": "word " * 2000}]
    r = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": huge, "transforms": ["middle-out"]})
    assert r.status_code == 400 and r.json()["error"]["metadata"]["error_type"] == "context_length_exceeded"


def test_legacy_prompt_loses_middle_tokens(fake, demo_tokenizer):
    ids = [demo_tokenizer.bos_token_id] + list(range(300, 400)) * 6  # 601 ids
    r = httpx.post(fake.url + "/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 2,
                                                    "plugins": [{"id": "context-compression"}]})
    assert r.status_code == 200, r.text
    sent = fake.engine.calls[-1].prompt_ids
    assert sent == ids[:256] + ids[-255:] and r.json()["usage"]["prompt_tokens"] == 511
    assert httpx.post(fake.url + "/completions", json={"model": MODEL, "prompt": ids}).status_code == 400
