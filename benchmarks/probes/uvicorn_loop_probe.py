"""A/B: plain `serve` app under uvicorn with loop=asyncio/http=h11 vs loop=uvloop/http=httptools
(what uvicorn's 'auto' picks once uvloop/httptools are installed). Single-stream decode tok/s.

    flock /tmp/gs-bench.lock python benchmarks/probes/uvicorn_loop_probe.py MODEL_DIR
"""
import asyncio, json, os, socket, subprocess, sys, time, statistics
import httpx
MODEL = sys.argv[1]
RUNNER = r'''
import sys, argparse, uvicorn
from gemmaserve.api.cli_serve import add_serve_parser, server_config_from_args
p = argparse.ArgumentParser(); add_serve_parser(p.add_subparsers(dest="c"))
loop, http = sys.argv[1], sys.argv[2]
orig = uvicorn.run
def run(app, **kw):
    kw.update(loop=loop, http=http); return orig(app, **kw)
uvicorn.run = run
a = p.parse_args(sys.argv[3:]); sys.exit(a.func(a))
'''
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def start(loop, http):
    pt = port()
    pr = subprocess.Popen([sys.executable, "-c", RUNNER, loop, http, "serve", "--model", MODEL, "--port", str(pt), "--log-level", "warning", "--max-model-len", "2048"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{pt}"
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200: return pr, base
        except Exception: pass
        time.sleep(0.5)
def one(base):
    body = {"model": "google/gemma-4-26b-a4b-it", "prompt": "hello there", "max_tokens": 64, "min_tokens": 64, "ignore_eos": True, "temperature": 0, "stream": True}
    t0 = time.perf_counter(); first = None; n = 0
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                if first is None: first = time.perf_counter()
                n += 1
    end = time.perf_counter()
    return (first - t0) * 1000, 63 / (end - first)
servers = {k: start(*k) for k in (("asyncio", "h11"), ("uvloop", "httptools"))}
res = {k: [] for k in servers}
try:
    for k, (_, b) in servers.items(): one(b)
    for r in range(4):
        for k, (_, b) in servers.items():
            res[k] += [one(b) for _ in range(3)]
finally:
    for pr, _ in servers.values():
        os.killpg(pr.pid, 15)
out = {f"{k[0]}+{k[1]}": {"ttft_ms_median": statistics.median(x[0] for x in v), "decode_tok_s_median": statistics.median(x[1] for x in v)} for k, v in res.items()}
print(json.dumps(out, indent=1))
