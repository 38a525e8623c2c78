"""Video for Gemma 4: decode with PyAV under limits, sample frames as transformers does (32 at
i*T//32, or an fps mode), resize every frame to one size at budget 70, mm:ss timestamps.

Deviations from transformers, documented: a clip with fewer frames than asked gets all its frames
(transformers raises); frames are resized with PIL bicubic (transformers' video processor uses
torchvision, about 1/255 apart, and needs a CUDA torch build on this index)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from gemmaserve.media.errors import MediaError
from gemmaserve.media.image import check_budget, patchify, resize_rgb
from gemmaserve.types import MediaInput

DEFAULT_FRAMES = 32
DEFAULT_FRAME_BUDGET = 70
UNKNOWN_FPS = 24.0  # what transformers assumes when a file does not say


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int = 50 * 2**20
    max_seconds: float = 60.0  # OpenRouter lists this model at "up to 60s"
    max_frames: int = 64  # sampled frames per video (fps mode can ask for more)
    max_decoded_frames: int = 7_200  # frames walked through while decoding (60 s at 120 fps)
    max_pixels: int = 8_294_400  # per frame (4K UHD)


@dataclass(frozen=True)
class VideoSampling:
    """num_frames (uniform, the default 32) or fps (frames per second of video); not both."""

    num_frames: int | None = DEFAULT_FRAMES
    fps: float | None = None
    budget: int = DEFAULT_FRAME_BUDGET


def sample_indices(total: int, src_fps: float, sampling: VideoSampling) -> list[int]:
    """transformers' default_sample_indices_fn: n frames at i*T//n; with fps, n = max(1, int(T/src_fps*fps)).
    n is capped at T (transformers raises there instead)."""
    if total <= 0:
        raise MediaError("the video has no frames")
    if sampling.fps is not None:
        n = max(1, int(total / src_fps * sampling.fps))
    else:
        n = sampling.num_frames or DEFAULT_FRAMES
    n = min(n, total)
    return [i * total // n for i in range(n)]


def timestamp(index: int, src_fps: float) -> str:
    """mm:ss of a frame, truncated (repeats such as 00:00 00:00 are what the reference prints)."""
    t = index / src_fps
    return f"{int(t // 60):02d}:{int(t % 60):02d}"


def decode_video(data: bytes, sampling: VideoSampling, limits: VideoLimits = VideoLimits()):
    """Bytes (mp4/webm/mov/mpeg...) -> (RGB frames [F] as PIL images, frame indices, source fps)."""
    import av  # PyAV: FFmpeg's demuxers and decoders

    if len(data) > limits.max_bytes:
        raise MediaError(f"the video is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("the file has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            src_fps = float(rate) if rate else UNKNOWN_FPS
            if stream.width * stream.height > limits.max_pixels:
                raise MediaError(f"video frames are {stream.width}x{stream.height}, over {limits.max_pixels} pixels")
            # Count frames by demuxing (no decoding), bounded, then decode keeping only the chosen ones.
            total = 0
            for packet in container.demux(stream):
                if packet.size:
                    total += 1
                    if total > limits.max_decoded_frames:
                        raise MediaError(f"the video has over {limits.max_decoded_frames} frames")
            if total / src_fps > limits.max_seconds:
                raise MediaError(f"the video is {total / src_fps:.1f} s long, over the {limits.max_seconds:g} s limit")
            indices = sample_indices(total, src_fps, sampling)
            if len(indices) > limits.max_frames:
                raise MediaError(f"sampling asks for {len(indices)} frames, over the limit of {limits.max_frames}")
            container.seek(0, stream=stream)
            wanted = set(indices)
            frames: dict[int, Image.Image] = {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i] = frame.to_image().convert("RGB")
                if i >= indices[-1]:
                    break
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise MediaError(f"the video data could not be decoded ({type(exc).__name__})") from exc
    # A stream whose packet count overstated its frames: keep the frames that exist.
    kept = [i for i in indices if i in frames]
    if not kept:
        raise MediaError("no frame of the video could be decoded")
    return [frames[i] for i in kept], kept, src_fps


def video_input(frames: list[Image.Image], indices: list[int], src_fps: float, budget: int,
                source_hash: bytes) -> MediaInput:
    """Frames -> MediaInput: all frames resized to the size of the first at `budget` (one token count)."""
    check_budget(budget)
    size = frames[0].size
    pix, pos = [], []
    for f in frames:
        if f.size != size:
            raise MediaError("video frames change size mid-stream")
        p, q = patchify(resize_rgb(f, budget))
        pix.append(p)
        pos.append(q)
    key = hashlib.sha256(b"video:%d:%s:" % (budget, ",".join(map(str, indices)).encode()) + source_hash).digest()
    stamps = tuple(timestamp(i, src_fps) for i in indices)
    return MediaInput("video", torch.stack(pix), torch.stack(pos), key, stamps)


def load_video(data: bytes, sampling: VideoSampling = VideoSampling(), limits: VideoLimits = VideoLimits()) -> MediaInput:
    check_budget(sampling.budget)
    frames, indices, fps = decode_video(data, sampling, limits)
    return video_input(frames, indices, fps, sampling.budget, hashlib.sha256(data).digest())


def frames_from_arrays(arrays: list[np.ndarray]) -> list[Image.Image]:
    """uint8 [H, W, 3] arrays (already sampled frames, as LLM.generate accepts them) -> PIL frames."""
    return [Image.fromarray(np.asarray(a, dtype=np.uint8), "RGB") for a in arrays]
