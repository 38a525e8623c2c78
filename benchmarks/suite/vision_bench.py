"""Vision benchmarks, baseline and candidate in one invocation, one JSON summary on stdout:

1. encoder seconds per image (budget 280) and per 32-frame video (70 per frame): gemmaserve's tower
   (unpadded, per-image attention) vs transformers' own Gemma4VisionModel + embedder, same weights,
   fp32 and bf16;
2. TTFT of a one-image request on the engine (bench text model + the vision tower), and of the
   same prompt with the image removed;
3. inter-token latency p50/p99 of 8 greedy text streams without and with image requests arriving
   mid-run (same engine, same run): the encoder runs in slices between steps.

The tower has the real width (1152 hidden, 4304 MLP, 16 heads of 72) and --layers of the real 27
encoder layers (default 4; time scales linearly in layers). Run under the bench lock:
    flock /tmp/gs-bench.lock python -m benchmarks.suite.vision_bench --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gemmaserve.config import CacheConfig, EngineConfig, SchedulerConfig
from gemmaserve.demo import REAL_VISION, write_demo_model
from gemmaserve.engine.engine import Engine
from gemmaserve.media.image import image_input
from gemmaserve.media.video import frames_from_arrays, video_input
from gemmaserve.model.vision import Gemma4VisionConfig, VisionEncoder
from gemmaserve.types import SamplingParams


def _picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def encoder_bench(layers: int, repeats: int, dtypes: list[str]) -> dict:
    import transformers
    from transformers.models.gemma4.modeling_gemma4 import Gemma4MultimodalEmbedder, Gemma4VisionModel

    vision = dict(REAL_VISION, num_hidden_layers=layers)
    raw = {"vision_config": vision, "text_config": {"hidden_size": 2816}}
    cfg = Gemma4VisionConfig.from_dict(raw)
    hf_cfg = transformers.Gemma4VisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    hf_text = transformers.Gemma4TextConfig(hidden_size=2816, num_hidden_layers=1, vocab_size=8)
    image = image_input(_picture(1024, 768, 0), 280, b"img")  # 266 tokens, 2394 patches
    frames = frames_from_arrays([np.asarray(_picture(640, 360, 10 + i)) for i in range(32)])
    video = video_input(frames, list(range(0, 320, 10)), 10.0, 70, b"vid")  # 32 x 66 tokens
    out: dict = {"layers": layers, "image_tokens": image.num_soft_tokens, "video_tokens": video.num_soft_tokens}
    for dt in dtypes:
        dtype = getattr(torch, dt)
        ours = VisionEncoder(cfg, dtype=dtype).init_random_(0).eval()
        ref = Gemma4VisionModel(hf_cfg).eval().to(dtype)
        emb = Gemma4MultimodalEmbedder(hf_cfg, hf_text).eval().to(dtype)
        sd = ours.vision_tower.state_dict()
        ref.load_state_dict({k: v for k, v in sd.items() if k in ref.state_dict()}, strict=False)
        emb.load_state_dict(ours.embed_vision.state_dict())

        def run_ours(m):
            pix = m.pixel_values.reshape(-1, m.pixel_values.shape[-1])
            ours.encode(pix, m.position_ids.reshape(-1, 2), [m.pixel_values.shape[1]] * m.num_frames)

        def run_ref(m, budget):
            # transformers' own input layout: every frame padded to budget*9 patches, (-1, -1) positions.
            width = budget * 9
            pad = width - m.pixel_values.shape[1]
            pv = torch.nn.functional.pad(m.pixel_values, (0, 0, 0, pad))
            pos = torch.nn.functional.pad(m.position_ids, (0, 0, 0, pad), value=-1)
            with torch.inference_mode():
                emb(ref(pixel_values=pv, pixel_position_ids=pos).last_hidden_state)

        row = {}
        for name, m, budget, reps in (("image_280", image, 280, repeats), ("video_32x70", video, 70, 1)):
            t_ref = _median(lambda: run_ref(m, budget), reps)
            t_ours = _median(lambda: run_ours(m), reps)
            row[name] = {"transformers_s": round(t_ref, 3), "gemmaserve_s": round(t_ours, 3),
                         "speedup": round(t_ref / t_ours, 2),
                         "gemmaserve_s_scaled_to_27_layers": round(t_ours * 27 / layers, 2)}
        out[dt] = row
    return out


def _bench_checkpoint(layers: int) -> Path:
    d = write_demo_model(Path(tempfile.mkdtemp()) / "bench-mm", "bench", write_weights=False)
    raw = json.loads((d / "config.json").read_text())
    raw["vision_config"] = dict(REAL_VISION, num_hidden_layers=layers)
    (d / "config.json").write_text(json.dumps(raw))
    return d


def _engine(path: Path, slice_rows: int) -> Engine:
    cfg = EngineConfig(model=str(path), dtype="bfloat16", dummy_weights=True, max_model_len=4096,
                       encoder_slice_rows=slice_rows,
                       cache=CacheConfig(memory_bytes=2 << 30, enable_prefix_caching=False),
                       scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=2048))
    return Engine.from_config(cfg)


def _image_prompt(engine: Engine, media, text_ids: list[int]) -> list[int]:
    vc = engine.vision.config
    raw = json.loads((Path(engine.config.model) / "config.json").read_text())
    return [2] + text_ids + [raw["boi_token_id"]] + [vc.image_token_id] * media.tokens_per_frame + [raw["eoi_token_id"]] + text_ids


def ttft_bench(path: Path, repeats: int, slice_rows: int) -> dict:
    engine = _engine(path, slice_rows)
    text = list(range(300, 340))

    def one(ids, media):
        rid = f"r{time.perf_counter_ns()}"
        t0 = time.perf_counter()
        engine.add_request(rid, ids, SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True), media)
        while engine.has_unfinished_requests():
            engine.step()
        return time.perf_counter() - t0

    img = [image_input(_picture(1024, 768, 100 + i), 280, b"t%d" % i) for i in range(repeats + 1)]
    one(_image_prompt(engine, img[-1], text), [img[-1]])  # warm-up
    with_image = statistics.median(one(_image_prompt(engine, m, text), [m]) for m in img[:repeats])
    text_only = statistics.median(one([2] + text + text, None) for _ in range(repeats))
    return {"image_280_ttft_s": round(with_image, 3), "same_text_without_image_ttft_s": round(text_only, 3),
            "image_tokens": img[0].num_soft_tokens}


def itl_bench(path: Path, slice_rows: int, n_tokens: int, n_images: int) -> dict:
    """8 text streams; in the second run image requests arrive after 8 and 24 steps."""
    engine = _engine(path, slice_rows)

    def run(images: bool) -> list[float]:
        stamps: dict[str, list[float]] = {}
        rng = np.random.default_rng(1)
        for i in range(8):
            ids = [2] + rng.integers(300, 30000, 128).tolist()
            engine.add_request(f"t{i}", ids, SamplingParams(max_tokens=n_tokens, temperature=0.0, ignore_eos=True))
        arrivals = {8 + 16 * k: k for k in range(n_images)} if images else {}
        step = 0
        while engine.has_unfinished_requests():
            if step in arrivals:
                m = image_input(_picture(1024, 768, 200 + arrivals[step] + 10 * images), 280, b"i%d%d" % (step, images))
                engine.add_request(f"img{step}", _image_prompt(engine, m, list(range(300, 320))),
                                   SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), [m])
            for out in engine.step():
                if out.request_id.startswith("t") and out.new_token_ids:
                    stamps.setdefault(out.request_id, []).append(time.perf_counter())
            step += 1
        gaps = [b - a for s in stamps.values() for a, b in zip(s[1:], s[2:])]  # after the first decode
        return gaps

    run(False)  # warm-up
    base, mixed = run(False), run(True)

    def pct(xs, q):
        return float(np.percentile(np.array(xs) * 1000, q))

    return {"text_only_itl_ms": {"p50": round(pct(base, 50), 1), "p99": round(pct(base, 99), 1)},
            "with_images_itl_ms": {"p50": round(pct(mixed, 50), 1), "p99": round(pct(mixed, 99), 1)},
            "p99_ratio": round(pct(mixed, 99) / pct(base, 99), 2), "images": n_images, "streams": 8,
            "tokens_per_stream": n_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4, help="encoder layers of the real-width tower (27 in the model)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--slice-rows", type=int, default=64)
    ap.add_argument("--itl-tokens", type=int, default=96)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: encoder,ttft,itl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    flags = torch.backends.cpu.get_cpu_capability()
    summary: dict = {"threads": args.threads, "cpu_capability": flags, "torch": torch.__version__}
    if "encoder" not in skip:
        summary["encoder"] = encoder_bench(args.layers, args.repeats, args.dtypes.split(","))
    path = _bench_checkpoint(args.layers)
    if "ttft" not in skip:
        summary["ttft"] = ttft_bench(path, args.repeats, args.slice_rows)
    if "itl" not in skip:
        summary["itl"] = itl_bench(path, args.slice_rows, args.itl_tokens, args.images)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
