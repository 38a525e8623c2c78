"""`gemmaserve generate --image PATH --video PATH` (subprocess, as a user runs it) and LLM.generate with
MultimodalPrompt: both give the engine's tokens for the same media."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemmaserve import LLM, MultimodalPrompt, SamplingParams
from gemmaserve.engine.llm import expand_media_text
from gemmaserve.media.image import load_image
from gemmaserve.media.video import load_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "media"))
from test_video import make_clip  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(d / "a.png")
    (d / "clip.mp4").write_bytes(make_clip(6, w=160, h=96))
    return d


def _ids(run) -> list[int]:
    line = next(x for x in run.stdout.splitlines() if x.startswith("token_ids: "))
    return json.loads(line[len("token_ids: "):])


def test_generate_with_image_and_video(demo_dir, files):
    base = [sys.executable, "-m", "gemmaserve.cli", "generate", "--model", str(demo_dir), "--prompt", "What is this?",
            "--max-tokens", "4", "--temperature", "0", "--ignore-eos", "--dtype", "float32", "--show-ids",
            "--image", str(files / "a.png"), "--video", str(files / "clip.mp4"), "--max-soft-tokens", "70"]
    run = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "[finish_reason=length tokens=4]" in run.stderr
    chat = subprocess.run(base + ["--chat"], capture_output=True, text=True, timeout=300)
    assert chat.returncode == 0, chat.stderr

    # The same request through LLM.generate gives the same tokens.
    llm = LLM(str(demo_dir), dtype="float32", max_model_len=2048)
    img = load_image((files / "a.png").read_bytes(), 70)
    vid = load_video((files / "clip.mp4").read_bytes())
    out = llm.generate(MultimodalPrompt("<|image|><|video|>What is this?", (img, vid)),
                       SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))[0]
    assert out.token_ids == _ids(run)
    assert len(out.prompt_token_ids) > img.num_soft_tokens + vid.num_soft_tokens


def test_generate_bad_image_is_an_error_line(demo_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    run = subprocess.run([sys.executable, "-m", "gemmaserve.cli", "generate", "--model", str(demo_dir), "--prompt",
                          "x", "--image", str(bad), "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr


def test_expand_media_text_checks_the_placeholders():
    img = load_image(_png_bytes(), 70)
    assert expand_media_text("a<|image|>b", [img]) == "a<|image>" + "<|image|>" * img.tokens_per_frame + "<image|>b"
    with pytest.raises(ValueError):
        expand_media_text("no placeholder", [img])
    with pytest.raises(ValueError):
        expand_media_text("<|video|>", [img])


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()
