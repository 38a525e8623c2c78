"""benchmarks.suite.ab_trees: per-tree medians over rounds and the candidate/base ratios."""

from benchmarks.suite.ab_trees import summarize


def test_medians_and_ratios():
    def run(b1, b32, pre):
        return {"b1": {"ms_per_step": b1, "tok_s": 1000 / b1}, "b32": {"ms_per_step": b32, "tok_s": 32000 / b32},
                "prefill512": {"ms": pre, "tok_s": 512000 / pre}}

    runs = {"base": [run(20, 100, 400), run(22, 110, 420), run(21, 90, 410)],
            "candidate": [run(10, 100, 800), run(11, 100, 800), run(12, 100, 800)]}
    out = summarize(runs, ["b1", "b32", "prefill512"])
    assert out["base"]["b1"]["ms"] == 21 and out["candidate"]["b1"]["ms"] == 11
    assert out["speedup_candidate_over_base"] == {"b1": round(21 / 11, 3), "b32": 1.0, "prefill512": round(410 / 800, 3)}
