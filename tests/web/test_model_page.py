"""The model page, playground and keys page in a real headless Chromium over a store-backed server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from platform_support import bearer, platform_server, wait_for_outcomes
from web_support import chart_points, shot

from gemmaserve.store import GenerationRecord, Outcome, StoreOptions

MGMT = "sk-gs-v1-management-test-key"
THINK_AND_CALL = ["<|channel>", "thought\n", "Need", " weather", "<channel|>", "<|tool_call>",
                  "call:get_weather{city:", '<|"|>', "Paris", '<|"|>', "}", "<tool_call|>"]
TOOLS = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", ' \
        '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}]'


@pytest.fixture
def srv(demo_tokenizer, tmp_path):
    with platform_server(demo_tokenizer, tmp_path, options=StoreOptions(min_uptime_samples=1)) as s:
        yield s


def test_charts_hold_the_traffic(srv, page):
    srv.engine.step_delay = 0.01
    key = srv.mgmt.post("/keys", json={"name": "web"}).json()["key"]
    usages = []
    for _ in range(3):
        r = httpx.post(f"{srv.url}/chat/completions", timeout=30, headers={
            **bearer(key), "HTTP-Referer": "https://notes.example", "X-OpenRouter-Title": "Notes"},
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
        usages.append(r.json()["usage"])
    assert httpx.post(f"{srv.url}/chat/completions", headers=bearer("sk-wrong-000000000"),
                      json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 401
    wait_for_outcomes(srv.store, 4)
    now = datetime.now(timezone.utc)
    two_hours_ago = now - timedelta(hours=2)
    for o in (Outcome(two_hours_ago, 200, "stop", 500, 1000, 50), Outcome(two_hours_ago, 502)):
        srv.store.record_outcome(o).result()
    srv.store.record_generation(GenerationRecord(
        id="gen-old", created_at=now - timedelta(days=2), api_key_hash=None, model="m", api_type="completions",
        provider_name="gemmaserve", tokens_prompt=100, tokens_completion=40, tokens_reasoning=10)).result()

    page.goto(srv.root + "/")
    page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
    charts = chart_points(page)
    shot(page, "model-page")
    assert page.js_errors == []

    up = charts["chart-uptime"]
    assert len(up["labels"]) == 72
    assert up["data"][0][-1] == 75.0  # 3 answers and one 401 this hour
    assert up["data"][0][-3] == 50.0  # the hour two back: one success, one 502
    assert all(v is None for v in up["data"][0][:-3])
    act = charts["chart-activity"]
    assert len(act["labels"]) == 30 and act["labels"][-1] == now.strftime("%Y-%m-%d")
    prompt, completion, reasoning = act["data"]
    assert prompt[-1] == sum(u["prompt_tokens"] for u in usages)
    assert completion[-1] == sum(u["completion_tokens"] for u in usages)
    assert (prompt[-3], completion[-3], reasoning[-3]) == (100, 30, 10)
    lat, thr = charts["chart-latency"], charts["chart-throughput"]
    assert lat["labels"][0] == two_hours_ago.strftime("%m-%dT%H:00")
    assert lat["data"][0][0] == 500 and thr["data"][0][0] == 50  # 50 tokens in 1000 ms
    assert lat["labels"][-1] == now.strftime("%m-%dT%H:00") and lat["data"][0][-1] >= 0 and thr["data"][0][-1] > 0

    weekly = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usages) + 140
    assert page.inner_text("#weekly-tokens") == f"{weekly:,}"
    assert page.inner_text("#price-in") == "$1000.00/M" and page.inner_text("#price-out") == "$10000.00/M"
    assert page.inner_text("#apps-body tr td:nth-child(2)") == "Notes"
    assert page.inner_text("#apps-body tr td:nth-child(3)") == "3"
    assert page.inner_text("#uptime-24h") == f"{round(100 * 4 / 6, 2)}%"
    assert "curl" in page.inner_text("#sample-curl") and "google/gemma-4-26b-a4b-it" in page.inner_text("#sample-python")
    # The same page at the model's path.
    page.goto(srv.root + "/google/gemma-4-26b-a4b-it")
    page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
    assert page.inner_text("#model-id") == "google/gemma-4-26b-a4b-it"


def test_playground_streams_thinking_and_tool_calls(srv, page):
    key = srv.mgmt.post("/keys", json={"name": "play"}).json()["key"]
    page.goto(srv.root + "/")
    page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
    page.fill("#pg-key", key)
    # A plain reply, streamed: the text grows while the status says streaming.
    srv.engine.script, srv.engine.step_delay = ["One", " two", " three", " four", " five", "."], 0.3
    page.fill("#pg-input", "Count")
    page.click("#pg-send")
    page.wait_for_function("""() => document.getElementById('pg-status').textContent === 'streaming…'
        && document.querySelector('.msg.assistant .content').textContent.length > 0""", timeout=20_000)
    partial = page.inner_text(".msg.assistant .content")
    page.wait_for_function("() => document.getElementById('pg-status').textContent === 'done'", timeout=20_000)
    assert page.inner_text(".msg.assistant .content") == "One two three four five."
    assert partial != "One two three four five." and "One two three four five.".startswith(partial)

    # Thinking folded, tool call shown.
    srv.engine.script, srv.engine.step_delay = THINK_AND_CALL, 0.0
    page.click("#playground details summary")
    page.fill("#pg-tools", TOOLS)
    page.check("#pg-reasoning")
    page.fill("#pg-input", "Weather in Paris?")
    page.click("#pg-send")
    page.wait_for_function("() => document.getElementById('pg-status').textContent === 'done'", timeout=20_000)
    last = page.locator(".msg.assistant").last
    thinking = last.locator("details.thinking")
    assert thinking.is_visible() and thinking.get_attribute("open") is None  # folded
    assert last.locator(".reasoning").text_content() == "Need weather"
    call = last.locator(".toolcall").text_content()
    assert call.startswith("get_weather(") and '"city"' in call and "Paris" in call
    shot(page, "playground")
    assert srv.engine.calls[-1].params.max_tokens == 256
    assert page.js_errors == []


def test_key_created_on_the_keys_page_authenticates(srv, page):
    page.goto(srv.root + "/keys")
    page.fill("#mk", MGMT)
    page.click("#mk-load")
    page.wait_for_function("() => document.getElementById('keys-status').textContent === '0 key(s)'")
    page.fill("#new-name", "from-the-page")
    page.fill("#new-limit", "2.5")
    page.select_option("#new-reset", "monthly")
    page.click("#new-create")
    page.wait_for_selector("#new-key-box:not([hidden])")
    plaintext = page.inner_text("#new-key")
    r = httpx.post(f"{srv.url}/chat/completions", headers=bearer(plaintext), timeout=30,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 200
    cost = f"${r.json()['usage']['cost']:.6f}"
    page.click("#mk-load")  # the table shows the request's charge once reloaded
    page.wait_for_function("(cost) => document.querySelector('#keys-body tr td:nth-child(6)').textContent === cost",
                           arg=cost)
    row = page.locator("#keys-body tr").first
    cells = row.locator("td").all_text_contents()
    assert cells[0] == "from-the-page" and cells[2] == "$2.500000" and cells[4] == "monthly"
    assert page.locator("#keys-body tr").count() == 1
    shot(page, "keys-page")
    row.locator("button", has_text="Disable").click()
    page.wait_for_function("() => document.querySelector('#keys-body tr td:nth-child(9)').textContent === 'disabled'")
    assert httpx.post(f"{srv.url}/chat/completions", headers=bearer(plaintext),
                      json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 401
    assert page.js_errors == []


def test_playground_uploads_an_image_when_the_model_takes_images(srv, page, tmp_path):
    from PIL import Image

    img = tmp_path / "dot.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(img)
    srv.engine.takes_media = True  # /models then advertises image input
    sent = []
    page.on("request", lambda req: sent.append(req.post_data_json) if req.url.endswith("/chat/completions") else None)
    page.goto(srv.root + "/")
    page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
    assert page.locator("#pg-image-wrap").is_visible()
    page.set_input_files("#pg-image", str(img))
    page.fill("#pg-input", "What colour?")
    page.click("#pg-send")
    page.wait_for_function("() => ['done', 'error'].includes(document.getElementById('pg-status').textContent)",
                           timeout=20_000)
    parts = sent[-1]["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "What colour?"}
    assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_no_image_upload_for_a_text_only_model(srv, page):
    page.goto(srv.root + "/")
    page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
    assert not page.locator("#pg-image-wrap").is_visible()
