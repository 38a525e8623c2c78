"""media/video.py: PyAV decoding, transformers' frame sampling (32 at i*T//32, or fps), short clips,
mm:ss timestamps, one size for all frames at budget 70, the prompt expansion, and the limits."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from gemmaserve.media.errors import MediaError
from gemmaserve.media.video import (
    VideoLimits,
    VideoSampling,
    load_video,
    sample_indices,
    timestamp,
)


def make_clip(n_frames: int, fps: int = 24, w: int = 160, h: int = 96, fmt: str = "mp4", codec: str = "mpeg4") -> bytes:
    """A clip whose frame i is a flat grey of level 4*i (so a decoded frame tells its index)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"qscale": "1"} if codec == "mpeg4" else {}
        for i in range(n_frames):
            arr = np.full((h, w, 3), 4 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_sample_indices_as_transformers():
    s = VideoSampling()
    assert sample_indices(48, 24.0, s) == [i * 48 // 32 for i in range(32)]
    assert sample_indices(10, 24.0, s) == list(range(10))  # short clip: every frame (documented deviation)
    assert sample_indices(96, 24.0, VideoSampling(num_frames=None, fps=1.0)) == [0, 24, 48, 72]
    assert sample_indices(5, 24.0, VideoSampling(num_frames=None, fps=1.0)) == [0]  # at least one frame


def test_timestamps_truncate():
    assert [timestamp(i, 24.0) for i in (0, 12, 24, 1440 + 36)] == ["00:00", "00:00", "00:01", "01:01"]


def test_decodes_the_sampled_frames():
    clip = make_clip(48)
    media = load_video(clip)
    assert media.kind == "video" and media.num_frames == 32
    assert media.pixel_values.shape[1] == media.position_ids.shape[1] == 9 * media.tokens_per_frame
    want = [i * 48 // 32 for i in range(32)]
    with av.open(io.BytesIO(clip)) as c:  # every frame, decoded directly (the codec is lossy)
        direct = [f.to_ndarray(format="rgb24")[..., 0].mean() for f in c.decode(video=0)]
    levels = (media.pixel_values[:, :, 0].mean(dim=1) * 255).tolist()
    assert all(abs(lv - direct[i]) < 0.5 for lv, i in zip(levels, want)), levels
    assert media.timestamps[0] == "00:00" and media.timestamps[-1] == "00:01"


def test_short_clip_and_prompt_text():
    media = load_video(make_clip(5, fps=5))
    assert media.num_frames == 5
    assert media.timestamps == ("00:00", "00:00", "00:00", "00:00", "00:00")
    n = media.tokens_per_frame
    text = media.prompt_text()
    assert text.startswith("00:00 <|image>" + "<|video|>" * n + "<image|> 00:00 <|image>")
    assert text.count("<|video|>") == 5 * n and not text.endswith(" ")


def test_16_9_frames_take_66_tokens():
    media = load_video(make_clip(4, w=320, h=180))
    assert media.tokens_per_frame == 66  # 528x288 at budget 70 (spec 8.6)


def test_webm_container():
    media = load_video(make_clip(6, fmt="webm", codec="libvpx"))
    assert media.num_frames == 6


def test_limits_and_bad_data():
    with pytest.raises(MediaError, match="could not be decoded|no video"):
        load_video(b"\x00\x01garbage" * 50)
    with pytest.raises(MediaError, match="s limit"):
        load_video(make_clip(48, fps=24), limits=VideoLimits(max_seconds=1.0))
    with pytest.raises(MediaError, match="byte limit"):
        load_video(make_clip(4), limits=VideoLimits(max_bytes=100))
    with pytest.raises(MediaError, match="frames"):
        load_video(make_clip(48), VideoSampling(num_frames=None, fps=24.0), VideoLimits(max_frames=16))
    with pytest.raises(MediaError, match="max_soft_tokens"):
        load_video(make_clip(4), VideoSampling(budget=71))
