"""Burst vs steady-state TTFT windows: which requests each covers, failures counted, the report table."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest


from benchmarks.suite import serving
from benchmarks.suite.prompts import PromptVocab
from benchmarks.suite.report import render
from benchmarks.suite.stats import RequestRecord, summarize


def test_summarize_splits_ttft_by_window_and_counts_failures():
    recs = [
        RequestRecord(start=0.0, chunk_times=[1.0, 1.1], end=1.1, output_tokens=2, burst=True),
        RequestRecord(start=0.0, chunk_times=[3.0, 3.1], end=3.1, output_tokens=2, burst=True),
        RequestRecord(start=0.0, end=0.5, success=False, error="HTTP 500: x", burst=True),
        RequestRecord(start=1.1, chunk_times=[1.3, 1.4], end=1.4, output_tokens=2),
        RequestRecord(start=3.1, chunk_times=[3.5, 3.6], end=3.6, output_tokens=2),
        RequestRecord(start=3.6, chunk_times=[3.9, 4.0], end=4.0, output_tokens=2),
    ]
    s = summarize(recs, duration=4.0)
    assert s["ttft_burst_ms"]["median"] == pytest.approx(2000.0)  # 1.0 s and 3.0 s
    assert s["ttft_steady_ms"]["median"] == pytest.approx(300.0)  # 0.2, 0.4, 0.3 s
    assert s["ttft_steady_ms"]["p99"] == pytest.approx(398.0)
    assert s["ttft_ms"]["median"] == pytest.approx(400.0)  # all five: 0.2 0.3 0.4 1.0 3.0
    w = s["ttft_windows"]
    assert (w["burst"]["completed"], w["burst"]["failed"]) == (2, 1)
    assert (w["steady"]["completed"], w["steady"]["failed"]) == (3, 0)
    assert w["burst"]["completed"] + w["burst"]["failed"] + w["steady"]["completed"] == len(recs)


def _server(active: list[int], peak: list[int]):
    """SSE server that tracks how many requests are in flight; each yields to the loop between chunks."""

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if request.url.path == "/props":
            return httpx.Response(404)
        body = json.loads(request.content)
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.01)
        active[0] -= 1
        n = body["max_tokens"]
        lines = []
        for i in range(n):
            lines += ["data: " + json.dumps({"choices": [{"index": 0, "text": f"t{i}"}]}), ""]
        lines += ["data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n}}), "", "data: [DONE]", ""]
        return httpx.Response(200, text="\n".join(lines), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def test_serving_marks_the_first_concurrency_requests_as_burst():
    args = serving.parse_args(["--endpoint", "x=http://fake", "--token-range", "100:200", "--num-prompts", "7",
                               "--concurrency", "3", "--input-len", "8", "--output-len", "2", "--warmup", "0"])
    active, peak = [0], [0]

    async def go():
        async with httpx.AsyncClient(transport=_server(active, peak)) as client:
            ep = await serving.discover(client, "x", "http://fake", None)
            return await serving.bench_endpoint(ep, args, PromptVocab.from_range("100:200", 2), client)

    (row,) = asyncio.run(go())
    s = row["summary"]
    assert peak[0] == 3
    assert s["ttft_windows"]["burst"]["completed"] == 3 and s["ttft_windows"]["steady"]["completed"] == 4
    assert s["ttft_windows"]["burst"]["failed"] == 0 and s["ttft_windows"]["steady"]["failed"] == 0
    assert s["ttft_burst_ms"]["median"] is not None and s["ttft_steady_ms"]["median"] is not None


def _summary(ttft: float, burst: float | None, steady: float | None, nb: int, ns: int) -> dict:
    d = lambda m: {"median": m, "p99": m}  # noqa: E731
    return {"output_throughput": 1.0, "request_throughput": 1.0, "ttft_ms": d(ttft), "tpot_ms": d(1.0),
            "itl_ms": d(1.0), "e2el_ms": d(1.0), "failed": 0, "ttft_burst_ms": d(burst), "ttft_steady_ms": d(steady),
            "ttft_windows": {"burst": {"completed": nb, "failed": 0}, "steady": {"completed": ns, "failed": 0}}}


def test_report_shows_burst_and_steady_ttft_and_judges_both(tmp_path):
    rows = [{"endpoint": "gemmaserve", "concurrency": 1, "summary": _summary(500.0, 500.0, 480.0, 1, 7)},
            {"endpoint": "gemmaserve", "concurrency": 16, "summary": _summary(900.0, 3000.0, 800.0, 16, 48)}]
    (tmp_path / "ttft.json").write_text(json.dumps({"results": rows}))
    md = render(tmp_path)
    assert "| gemmaserve | 500 | 900 | 3,000 (n=16) | 800 (n=48) | 1.60 | 1.80 | 900 |" in md
    assert "| TTFT p50 at 16 streams <= 2x 1-stream TTFT | 900.0 vs target 1,000.0 | MET (0.90x of target) |" in md
    assert "|   same, steady state (requests after the first 16) | 800.0 vs target 1,000.0 | MET (0.80x of target) |" in md
    assert "|   same, burst (the first 16, sent at once) | 3,000.0 vs target 1,000.0 | MISSED (3.00x of target) |" in md
