"""Keys as OpenRouter has them: the management API, /key with true usage, /credits, kinds of keys."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
from platform_support import bearer, chat, platform_server

from gemmaserve.api.keys import hash_key

MGMT = "sk-gs-v1-management-test-key"


@pytest.fixture
def srv(demo_tokenizer, tmp_path):
    with platform_server(demo_tokenizer, tmp_path, api_key_hashes=frozenset({hash_key("static-key-123456")})) as s:
        yield s


def test_key_lifecycle_through_the_management_api(srv):
    r = srv.mgmt.post("/keys", json={"name": "alice", "limit": 5, "limit_reset": "weekly",
                                     "expires_at": "2099-01-01T00:00:00Z"})
    assert r.status_code == 201
    body = r.json()
    plaintext, data = body["key"], body["data"]
    assert data["hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert data["label"].endswith(plaintext[-3:]) and plaintext not in data["label"]
    assert (data["name"], data["limit"], data["limit_remaining"], data["limit_reset"], data["disabled"]) == (
        "alice", 5, 5, "weekly", False)
    assert data["expires_at"] == "2099-01-01T00:00:00Z" and data["usage"] == 0 and data["updated_at"] is None
    assert "key" not in srv.mgmt.get(f"/keys/{data['hash']}").json()  # plaintext only once

    listed = srv.mgmt.get("/keys").json()["data"]
    assert [k["hash"] for k in listed] == [data["hash"]]  # management keys are not listed

    r = srv.mgmt.patch(f"/keys/{data['hash']}", json={"name": "alice2", "limit": None, "disabled": True})
    assert r.status_code == 200
    patched = r.json()["data"]
    assert (patched["name"], patched["limit"], patched["limit_remaining"], patched["disabled"]) == (
        "alice2", None, None, True)
    assert patched["updated_at"] is not None
    assert srv.mgmt.get("/keys").json()["data"] == []
    assert len(srv.mgmt.get("/keys", params={"include_disabled": "true"}).json()["data"]) == 1

    assert srv.mgmt.delete(f"/keys/{data['hash']}").json() == {"deleted": True}
    r = srv.mgmt.get(f"/keys/{data['hash']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404


def test_management_api_refuses_bad_bodies_and_wrong_keys(srv):
    for body, param in (({"limit": 1}, "name"), ({"name": "x", "limit": -1}, "limit"),
                        ({"name": "x", "limit_reset": "yearly"}, "limit_reset")):
        r = srv.mgmt.post("/keys", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["code"] == 400
    r = srv.mgmt.post("/keys", json={"name": "x", "expires_at": "2000-01-01T00:00:00Z"})
    assert r.status_code == 400 and r.json()["error"]["metadata"]["param"] == "expires_at"
    assert httpx.get(f"{srv.url}/keys").status_code == 401
    r = httpx.get(f"{srv.url}/keys", headers=bearer("static-key-123456"))
    assert r.status_code == 403 and r.json()["error"]["metadata"]["error_type"] == "permission_denied"
    assert httpx.get(f"{srv.url}/credits", headers=bearer("static-key-123456")).status_code == 403
    assert srv.mgmt.get(f"/keys/{'0' * 64}").status_code == 404


def test_created_key_authenticates_and_usage_is_true(srv):
    created = srv.mgmt.post("/keys", json={"name": "bob", "limit": 1.0, "limit_reset": "daily"}).json()
    key = created["key"]
    client = openai.OpenAI(base_url=srv.url, api_key=key)
    costs = []
    for _ in range(2):
        reply = client.chat.completions.create(model="google/gemma-4-26b-a4b-it",
                                               messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        costs.append(reply.usage.model_extra["cost"])
    stream = client.chat.completions.create(model="google/gemma-4-26b-a4b-it", stream=True, max_tokens=8,
                                            messages=[{"role": "user", "content": "hi"}])
    costs += [c.usage.model_extra["cost"] for c in stream if c.usage is not None]
    assert len(costs) == 3 and all(c > 0 for c in costs)
    info = httpx.get(f"{srv.url}/key", headers=bearer(key)).json()["data"]
    total = sum(costs)
    assert info["usage"] == pytest.approx(total) == info["usage_daily"] == info["usage_weekly"] == info["usage_monthly"]
    assert info["limit"] == 1.0 and info["limit_remaining"] == pytest.approx(1.0 - total)
    assert info["is_management_key"] is False and info["label"] == created["data"]["label"]
    listed = srv.mgmt.get(f"/keys/{created['data']['hash']}").json()["data"]
    assert listed["usage"] == pytest.approx(total)
    credits = srv.mgmt.get("/credits").json()["data"]
    assert credits == {"total_credits": 1.0, "total_usage": pytest.approx(total)}
    assert httpx.get(f"{srv.url}/key", headers=bearer(MGMT)).json()["data"]["is_management_key"] is True


def test_kinds_of_keys_at_inference(srv):
    # Static keys keep working beside stored ones; a management key never runs inference.
    assert chat(srv, "static-key-123456", max_tokens=4).status_code == 200
    r = chat(srv, MGMT, max_tokens=4)
    assert r.status_code == 403 and r.json()["error"]["metadata"]["error_type"] == "permission_denied"
    assert chat(srv, None).status_code == 401
    assert chat(srv, "sk-unknown-0000000000").status_code == 401

    created = srv.mgmt.post("/keys", json={"name": "carol"}).json()
    assert chat(srv, created["key"], max_tokens=4).status_code == 200
    srv.mgmt.patch(f"/keys/{created['data']['hash']}", json={"disabled": True})
    r = chat(srv, created["key"])
    assert r.status_code == 401 and "disabled" in r.json()["error"]["message"]
    assert httpx.get(f"{srv.url}/key", headers=bearer(created["key"])).status_code == 401

    soon = srv.mgmt.post("/keys", json={"name": "dave"}).json()
    srv.store.update_key(soon["data"]["hash"], expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    r = chat(srv, soon["key"])
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_keys_survive_a_restart(demo_tokenizer, tmp_path):
    with platform_server(demo_tokenizer, tmp_path) as s:
        created = s.mgmt.post("/keys", json={"name": "erin", "limit": 2}).json()
        assert chat(s, created["key"], max_tokens=4).status_code == 200
        usage = httpx.get(f"{s.url}/key", headers=bearer(created["key"])).json()["data"]["usage"]
    with platform_server(demo_tokenizer, tmp_path) as s:
        info = httpx.get(f"{s.url}/key", headers=bearer(created["key"])).json()["data"]
        assert info["usage"] == usage > 0 and info["limit_remaining"] == pytest.approx(2 - usage)


def test_management_keys_from_a_file(demo_tokenizer, tmp_path):
    from gemmaserve.api.cli_serve import add_serve_parser, server_config_from_args

    keys_file = tmp_path / "mgmt.txt"
    keys_file.write_text(f"# ops\n{hash_key('file-management-key-1')}\n")
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "m", "--management-keys-file", str(keys_file)])
    cfg = server_config_from_args(args)
    assert cfg.management_key_hashes == {hash_key("file-management-key-1")}
    with platform_server(demo_tokenizer, tmp_path / "data", management_key_hashes=cfg.management_key_hashes) as s:
        h = bearer("file-management-key-1")
        assert httpx.post(f"{s.url}/keys", json={"name": "x"}, headers=h).status_code == 201
        assert httpx.get(f"{s.url}/key", headers=h).json()["data"]["is_management_key"] is True
        assert chat(s, "file-management-key-1").status_code == 403


def test_keys_cli_creates_and_lists(tmp_path, capsys):
    from gemmaserve.cli import main

    data = str(tmp_path / "data")
    assert main(["keys", "create", "--management", "--name", "ops", "--data-dir", data]) == 0
    plaintext = capsys.readouterr().out.strip()
    assert main(["keys", "create", "--name", "alice", "--limit", "3", "--limit-reset", "daily",
                 "--data-dir", data]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--data-dir", data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(hash_key(plaintext)) and "management" in lines[0]
    assert "alice" in lines[1] and "limit=3.0/daily" in lines[1] and "active" in lines[1]
    with pytest.raises(SystemExit):  # argparse refuses an unknown reset period
        main(["keys", "create", "--limit-reset", "yearly", "--data-dir", data])
