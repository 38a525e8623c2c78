"""make-demo-model CLI: path on stdout, parameter counts on stderr, --shard-bytes, the weightless 26B-A4B shape."""

import json

from gemmaserve.cli import main
from gemmaserve.demo import describe


def test_tiny_prints_path_and_param_counts(tmp_path, capsys):
    assert main(["make-demo-model", str(tmp_path / "m"), "--size", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'm'}\n"
    assert err == describe("tiny") + "\n"
    assert "M text parameters" in err and (tmp_path / "m" / "model.safetensors").is_file()


def test_shard_bytes_splits_the_weights(tmp_path, capsys):
    d = tmp_path / "m"
    assert main(["make-demo-model", str(d), "--size", "tiny", "--shard-bytes", "300000"]) == 0
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == sorted(p.name for p in d.glob("model-*.safetensors"))
    assert all((d / s).stat().st_size <= 300000 + 64 * 1024 for s in shards)  # header slack
    assert not (d / "model.safetensors").exists()


def test_shard_bytes_must_be_positive(tmp_path, capsys):
    assert main(["make-demo-model", str(tmp_path / "m"), "--shard-bytes", "0"]) == 2
    assert "--shard-bytes must be >= 1" in capsys.readouterr().err


def test_26b_a4b_writes_no_weights_and_says_how_to_serve(tmp_path, capsys):
    d = tmp_path / "big"
    assert main(["make-demo-model", str(d), "--size", "26b-a4b"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{d}\n"
    lines = err.splitlines()
    assert lines[0] == describe("26b-a4b")
    assert "no weights were written" in lines[1]
    assert lines[2].strip() == f"gemmaserve serve --model {d} --dummy-weights"
    assert not list(d.glob("*.safetensors")) and (d / "config.json").is_file()


def test_weightless_dir_needs_dummy_weights(tmp_path, capsys):
    from gemmaserve.demo import write_demo_model

    d = write_demo_model(tmp_path / "m", "tiny", write_weights=False)
    assert main(["generate", "--model", str(d), "--prompt", "Hi", "--dtype", "float32", "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "no model.safetensors" in err and "--dummy-weights" in err
    assert main(["generate", "--model", str(d), "--prompt", "Hi", "--dtype", "float32", "--max-tokens", "2",
                 "--ignore-eos", "--dummy-weights"]) == 0
    assert "[finish_reason=length tokens=2]" in capsys.readouterr().err

