"""The README quickstart as a user types it: `make serve` wiring, the console script serving the
demo model with make serve's arguments, and make-demo-model + generate equal to the offline LLM."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from integ_server import MODEL, SUBPROCESS_ENV, one_torch_thread, serve

from gemmaserve import LLM, SamplingParams
from gemmaserve.demo import write_demo_model

ROOT = Path(__file__).resolve().parents[2]
GEMMASERVE = Path(sys.executable).parent / "gemmaserve"  # the console script pip put beside python

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _make(*args: str) -> list[str]:
    # Under `make test` the parent's MAKEFLAGS/MAKELEVEL would add "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_serve_writes_the_demo_model_then_serves_it(tmp_path):
    demo = tmp_path / "demo"  # does not exist yet: make must write it first
    lines = _make("serve", f"DEMO={demo}")
    write = lines.index(f".venv/bin/gemmaserve make-demo-model {demo} --size small")
    serve = lines.index(f".venv/bin/gemmaserve serve --model {demo} --host 127.0.0.1 --port 8000")
    assert write < serve and serve == len(lines) - 1
    # With MODEL set no demo model is written, and PORT/HOST reach the server.
    lines = _make("serve", f"DEMO={demo}", "MODEL=/models/gemma", "PORT=9001", "HOST=0.0.0.0")
    assert not any("make-demo-model" in line for line in lines)
    assert lines[-1] == ".venv/bin/gemmaserve serve --model /models/gemma --host 0.0.0.0 --port 9001"
    # The lead's Makefile may pin torch to one thread for the suite (the 2-core box spins otherwise).
    # make test runs every test: one pytest over all but the real-Ray files, then each of those in a
    # fresh process of its own (the Makefile says why).
    main_run, ray_runs = _make("test")[-2:]
    m = re.fullmatch(r"(OMP_NUM_THREADS=\S+ )?\.venv/bin/python -m pytest -q((?: --ignore=\S+)*)", main_run)
    assert m, main_run
    ignored = re.findall(r"--ignore=(\S+)", m.group(2))
    assert ignored and re.findall(r"pytest -q (\S+)", ray_runs) == ignored
    assert all((ROOT / t).is_file() for t in ignored)


def _run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([str(GEMMASERVE), *args], env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def test_make_demo_model_then_generate(tmp_path):
    model = tmp_path / "demo"
    assert _run("make-demo-model", str(model), "--size", "small").stdout.strip() == str(model)
    assert {"config.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in model.iterdir()}
    assert any(p.suffix == ".safetensors" for p in model.iterdir())

    # The quickstart command, greedy so the offline engine can say which ids it must print.
    out = _run("generate", "--model", str(model), "--prompt", "hi", "--max-tokens", "5", "--temperature", "0",
               "--show-ids")
    m = re.search(r"\[finish_reason=(\w+) tokens=(\d+)\]", out.stderr)
    ids = [int(x) for x in re.search(r"token_ids: \[([\d, ]*)\]", out.stdout).group(1).split(",") if x.strip()]
    llm = LLM(model=str(model), dtype="bfloat16", max_model_len=256, kv_cache_memory_bytes=16 << 20)
    want = llm.generate("hi", SamplingParams(max_tokens=5, temperature=0))[0]
    assert ids == want.token_ids and 1 <= len(ids) <= 5
    assert m.groups() == (want.finish_reason.value, str(len(ids)))
    assert out.stdout.startswith(want.text)


def test_console_script_serves_the_demo_model_as_make_serve_does(tmp_path):
    """`make serve`'s command (bf16, default cache and limits) answers the openai client."""
    model = write_demo_model(tmp_path / "demo", size="small")
    with serve(model, tmp_path, "--host", "127.0.0.1", cmd_prefix=[str(GEMMASERVE)]) as srv:
        client = openai.OpenAI(base_url=srv.api, api_key="unused", max_retries=0, timeout=120)
        resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, extra_body={"ignore_eos": True})
        assert resp.usage.completion_tokens == 5 and resp.choices[0].finish_reason == "length"
        chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=5, stream=True, extra_body={"ignore_eos": True}))
        assert chunks[-1].usage.completion_tokens == 5
        assert client.models.list().data[0].model_extra["context_length"] == 8192  # the CPU default
    assert "the API is open to anyone" in srv.log_text()
