"""/models, /models/.../endpoints, /generation, /health, /metrics, legacy /completions, serve CLI."""

from __future__ import annotations

import argparse
import hashlib

import httpx
import openai
import pytest

from gemmaserve.api.keys import hash_key, load_key_hashes
from gemmaserve.api.cli_serve import add_serve_parser, server_config_from_args
from gemmaserve.api.usage import TokenCounts, usage_object

MODEL = "google/gemma-4-26b-a4b-it"
MSGS = [{"role": "user", "content": "Hi"}]


def test_models_list_object(fake):
    for base in (fake.url, fake.root + "/v1"):
        body = httpx.get(base + "/models").json()
        assert body["total_count"] == 1 and body["links"] == {"next": None}
        m = body["data"][0]
        assert m["id"] == MODEL and m["canonical_slug"] == "google/gemma-4-26b-a4b-it-20260403"
        assert m["context_length"] == 512  # the engine's max_model_len, not the model's 262,144
        assert m["pricing"]["prompt"] == "0.00000006" and m["pricing"]["completion"] == "0.00000033"
        # Text in only: image/video parts are refused with a 400 (no vision front end).
        assert m["architecture"] == {"modality": "text->text", "input_modalities": ["text"],
                                     "output_modalities": ["text"], "tokenizer": "Gemma", "instruct_type": None}
        assert m["top_provider"] == {"context_length": 512, "max_completion_tokens": 512, "is_moderated": False}
        assert {"tools", "tool_choice", "reasoning", "response_format", "structured_outputs", "top_k", "top_a"} <= set(
            m["supported_parameters"])
        assert "web_search_options" not in m["supported_parameters"]  # refused with a 400
        assert m["default_parameters"] == {"temperature": 1.0, "top_p": 0.95, "top_k": 64}
        assert m["links"] == {"details": f"/api/v1/models/{MODEL}/endpoints"}
    ids = [m.id for m in openai.OpenAI(base_url=fake.url, api_key="x").models.list()]
    assert ids == [MODEL]


def test_models_filters(fake):
    def count(**params):
        return httpx.get(fake.url + "/models", params=params).json()["total_count"]

    assert count(supported_parameters="tools,reasoning") == 1
    assert count(supported_parameters="tools,web_search_options") == 0
    assert count(output_modalities="image") == 0 and count(output_modalities="all") == 1
    assert count(input_modalities="audio") == 0 and count(input_modalities="image,audio") == 0
    assert count(input_modalities="text,image") == 1


def test_model_endpoints_and_single_model(fake):
    body = httpx.get(fake.url + f"/models/{MODEL}/endpoints").json()["data"]
    assert body["id"] == MODEL and body["architecture"]["tokenizer"] == "Gemma"
    (ep,) = body["endpoints"]
    assert ep["model_id"] == "google/gemma-4-26b-a4b-it-20260403" and ep["provider_name"] == "gemmaserve"
    assert ep["status"] == 0 and ep["context_length"] == 512 and ep["pricing"]["prompt"] == "0.00000006"
    assert httpx.get(fake.url + f"/model/{MODEL}").json()["data"]["id"] == MODEL
    r = httpx.get(fake.url + "/models/openai/gpt-4o/endpoints")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404


def test_generation_lookup(fake):
    raw = httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS, "user": "u1"},
                     headers={"HTTP-Referer": "https://app.example", "X-Title": "t"})
    gen_id = raw.headers["x-generation-id"]
    usage = raw.json()["usage"]
    rec = httpx.get(fake.url + "/generation", params={"id": gen_id}).json()["data"]
    assert rec["id"] == gen_id and rec["model"] == "google/gemma-4-26b-a4b-it-20260403"
    assert rec["tokens_prompt"] == usage["prompt_tokens"] and rec["tokens_completion"] == usage["completion_tokens"]
    assert rec["total_cost"] == usage["cost"] and rec["finish_reason"] == "stop" and rec["streamed"] is False
    assert rec["external_user"] == "u1" and rec["http_referer"] == "https://app.example"
    assert rec["provider_name"] == "gemmaserve" and rec["cancelled"] is False and rec["is_byok"] is False
    r = httpx.get(fake.url + "/generation", params={"id": "gen-0-nope"})
    assert r.status_code == 404 and r.json()["error"]["metadata"]["error_type"] == "not_found"
    assert httpx.get(fake.url + "/generation").status_code == 400


def test_health_and_metrics(fake):
    assert httpx.get(fake.root + "/health").json() == {"status": "ok"}
    httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS})
    httpx.post(fake.url + "/chat/completions", json={"model": MODEL, "messages": MSGS, "temperature": 9})
    text = httpx.get(fake.root + "/metrics").text
    assert 'gemmaserve_requests_total{endpoint="/api/v1/chat/completions",status="200"}' in text
    assert 'gemmaserve_requests_total{endpoint="/api/v1/chat/completions",status="400"}' in text
    for name in ("gemmaserve_prompt_tokens_total", "gemmaserve_completion_tokens_total",
                 "gemmaserve_time_to_first_token_seconds_bucket", "gemmaserve_time_per_output_token_seconds_count",
                 "gemmaserve_num_requests_waiting 0.0", "gemmaserve_num_requests_running 0.0",
                 "gemmaserve_kv_cache_usage_ratio 0.0"):
        assert name in text


def test_legacy_completions_whole(fake, demo_tokenizer):
    client = openai.OpenAI(base_url=fake.url, api_key="x", max_retries=0)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Once upon", max_tokens=20)
    resp = raw.parse()
    assert resp.object == "text_completion" and resp.choices[0].text == "Hello world!"
    assert resp.choices[0].finish_reason == "stop"
    prompt_ids = [demo_tokenizer.bos_token_id] + demo_tokenizer.encode("Once upon")
    assert fake.engine.calls[-1].prompt_ids == prompt_ids
    completion = sum(len(demo_tokenizer.encode(p)) for p in ["Hello", " world", "!"])
    assert raw.http_response.json()["usage"] == usage_object(TokenCounts(len(prompt_ids), completion), 0.06, 0.33)
    # Token-id prompts go in as given; echo puts the prompt text in front.
    resp = client.completions.create(model=MODEL, prompt=[5, 6, 7], echo=True, logprobs=2)
    assert fake.engine.calls[-1].prompt_ids == [5, 6, 7]
    assert resp.choices[0].text == demo_tokenizer.decode([5, 6, 7]) + "Hello world!"
    lp = resp.choices[0].logprobs
    assert "".join(lp.tokens) == "Hello world!" and lp.text_offset[0] == len(demo_tokenizer.decode([5, 6, 7]))
    assert all(len(t) == 2 for t in lp.top_logprobs)
    r = httpx.post(fake.root + "/v1/completions", json={"prompt": [[1, 2], [3]]})
    assert r.status_code == 400 and "one prompt" in r.json()["error"]["message"]
    r = httpx.post(fake.url + "/completions", json={"prompt": [99999]})
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]


def test_serve_parser_and_keys(tmp_path):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    keys = tmp_path / "keys"
    keys.write_text(f"# team keys\n{hash_key('k1')}\n\n{hash_key('k2')}  # ci\n")
    args = parser.parse_args(["serve", "--model", "/m", "--api-keys-file", str(keys), "--prompt-price", "0.1",
                              "--keepalive-interval", "2"])
    cfg = server_config_from_args(args)
    assert cfg.api_key_hashes == {hash_key("k1"), hash_key("k2")} == load_key_hashes(keys)
    assert cfg.prompt_price_per_m == 0.1 and cfg.keepalive_interval_s == 2.0
    assert args.func.__name__ == "run_serve"
    keys.write_text("not-a-hash\n")
    with pytest.raises(ValueError, match="sha256"):
        load_key_hashes(keys)


def test_hash_key_command_prints_sha256(capsys):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    key = "abc" * 11  # 33 characters
    args = parser.parse_args(["hash-key", key])
    assert args.func(args) == 0
    assert capsys.readouterr().out == hashlib.sha256(key.encode()).hexdigest() + "\n"


def test_hash_key_refuses_short_keys_and_generates_random_ones(capsys):
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["hash-key", "abc"])
    assert args.func(args) == 2
    out = capsys.readouterr()
    assert out.out == "" and "shorter than 32 characters" in out.err and "--generate" in out.err
    args = parser.parse_args(["hash-key", "--generate"])
    assert args.func(args) == 0
    out = capsys.readouterr()
    key = out.err.strip().rsplit(" ", 1)[-1]
    assert key.startswith("sk-gs-v1-") and len(key) == 9 + 64
    assert out.out == hashlib.sha256(key.encode()).hexdigest() + "\n"


def test_serve_key_from_env_or_file_stays_out_of_argv(tmp_path, monkeypatch):
    from gemmaserve.config import API_KEY_ENV

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    monkeypatch.setenv(API_KEY_ENV, "sk-from-env-0123456789")
    cfg = server_config_from_args(parser.parse_args(["serve", "--model", "/m"]))
    assert cfg.api_key_hashes == {hash_key("sk-from-env-0123456789")}
    monkeypatch.delenv(API_KEY_ENV)
    assert server_config_from_args(parser.parse_args(["serve", "--model", "/m"])).api_key_hashes == frozenset()
    f = tmp_path / "key"
    f.write_text("sk-from-file-0123456789\n")
    cfg = server_config_from_args(parser.parse_args(["serve", "--model", "/m", "--api-key-file", str(f)]))
    assert cfg.api_key_hashes == {hash_key("sk-from-file-0123456789")}
    f.write_text("\n")
    with pytest.raises(ValueError, match="no key"):
        server_config_from_args(parser.parse_args(["serve", "--model", "/m", "--api-key-file", str(f)]))
