"""`gemmaserve quantize` in subprocesses like a user runs it: then `generate` on the 4-bit copy, and
clear errors for bad input."""

import json
import subprocess
import sys


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gemmaserve.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_quantize_then_generate_on_the_4bit_copy(demo_dir, tmp_path):
    dst = tmp_path / "tiny-w4a16"
    made = cli("quantize", str(demo_dir), str(dst), "--group-size", "32")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(dst)
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["format"]) == ("compressed-tensors", "pack-quantized")
    # No --quantization flag: the checkpoint says it is 4-bit.
    run = cli("generate", "--model", str(dst), "--prompt", "Hello there", "--max-tokens", "4", "--temperature", "0",
              "--ignore-eos", "--show-ids")
    assert run.returncode == 0, run.stderr
    assert "[finish_reason=length tokens=4]" in run.stderr


def test_quantize_rejects_bad_input_without_traceback(demo_dir, tmp_path):
    for args in ((str(demo_dir), str(tmp_path / "a"), "--group-size", "48"), (str(tmp_path / "nope"), str(tmp_path / "b"))):
        run = cli("quantize", *args)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr
