"""Media in the engine: where each image / video frame sits in a prompt (spans), and the encoder
runner that turns requests' media into cached embeddings in time slices between model steps."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Generator, Iterable, Sequence

import torch

from gemmaserve.engine.encoder_cache import EncoderCache
from gemmaserve.types import InvalidRequestError, MediaInput

# Frames of one video encoded by one job (the rest wait for the next): bounds a job's activations.
FRAMES_PER_JOB = 8


@dataclass(frozen=True)
class MediaSpan:
    """One bidirectional block: the soft-token run of an image or of one video frame."""

    start: int  # first prompt position of the run
    end: int  # one past its last
    media: int  # index into the request's media
    frame: int
    key: bytes  # encoder-cache key of this frame's embeddings


def frame_key(media: MediaInput, frame: int) -> bytes:
    return hashlib.sha256(media.content_hash + b"frame:%d" % frame).digest()


def find_spans(ids: Sequence[int], media: Sequence[MediaInput], image_id: int, video_id: int) -> list[MediaSpan]:
    """The prompt's soft-token runs matched to the media in order: an image takes one run of
    `tokens_per_frame` image ids, a video one run of video ids per frame. Anything else (a count or
    length that does not match, runs without media) is an InvalidRequestError, as in transformers."""
    runs: list[tuple[int, int, int]] = []  # (token id, start, end)
    p = 0
    while p < len(ids):
        if ids[p] in (image_id, video_id):
            q = p
            while q < len(ids) and ids[q] == ids[p]:
                q += 1
            runs.append((ids[p], p, q))
            p = q
        else:
            p += 1
    spans: list[MediaSpan] = []
    r = 0
    for m, item in enumerate(media):
        want = image_id if item.kind == "image" else video_id
        for f in range(item.num_frames):
            if r >= len(runs) or runs[r][0] != want or runs[r][2] - runs[r][1] != item.tokens_per_frame:
                raise InvalidRequestError(
                    f"the prompt's soft tokens do not match {item.kind} {m} "
                    f"({item.num_frames} frame(s) of {item.tokens_per_frame} tokens)"
                )
            spans.append(MediaSpan(runs[r][1], runs[r][2], m, f, frame_key(item, f)))
            r += 1
    if r != len(runs):
        raise InvalidRequestError(f"the prompt has {len(runs) - r} soft-token run(s) without a media input")
    return spans


@dataclass
class _Job:
    media: MediaInput
    frames: list[int]
    keys: list[bytes]
    steps: Generator[None, None, torch.Tensor]


class MediaEncoder:
    """Encodes what requests' upcoming prefill chunks need, one job (an image, or up to
    FRAMES_PER_JOB frames of a video) at a time, as a generator of slices (model/vision.py), so the
    engine can bound the encoder time spent between two model steps. Results go to the EncoderCache,
    pinned by every request that waits for them; `req.mm_ready[i]` says span i can be prefilled."""

    def __init__(self, vision: Any, cache: EncoderCache, rows_per_slice: int) -> None:
        self.vision = vision
        self.cache = cache
        self.rows_per_slice = rows_per_slice
        self.job: _Job | None = None
        self.encoded_frames = 0  # frames run through the tower (cache misses)
        self.slices = 0
        self.slice_seconds = 0.0  # moving average of one slice's wall time

    def refresh(self, requests: Iterable[Any]) -> list[tuple[Any, bytes]]:
        """Mark spans whose embeddings are cached as ready (pinning them); returns (request, key)
        of the spans still missing, in request order."""
        missing = []
        for req in requests:
            for i, span in enumerate(req.mm_spans):
                if req.mm_ready[i] or span.end <= req.num_computed_tokens:
                    continue
                if span.key in self.cache:
                    self.cache.pin(span.key, req.request_id)
                    req.mm_ready[i] = True
                else:
                    missing.append((req, span))
        return missing

    def run(self, requests: Sequence[Any], deadline: float | None) -> None:
        """Advance encoding until `deadline` (time.perf_counter) or, with None, until every span of
        `requests` is ready. Stops early when nothing is missing."""
        while True:
            missing = self.refresh(requests)
            if not missing and self.job is None:
                return
            if self.job is None:
                req, span = missing[0]
                self.job = self._start(req.media[span.media], span.frame, req)
            t0 = time.perf_counter()
            with torch.inference_mode():
                try:
                    next(self.job.steps)
                    self.slices += 1
                except StopIteration as done:
                    self._finish(done.value, requests)
            now = time.perf_counter()
            # A slice costs about what the last one did: stop when the next would overrun the deadline
            # (every call still makes one slice of progress).
            self.slice_seconds = 0.8 * self.slice_seconds + 0.2 * (now - t0)
            if deadline is not None and now + self.slice_seconds >= deadline:
                return

    def _start(self, media: MediaInput, first: int, req: Any) -> _Job:
        frames = []
        for f in range(first, min(first + FRAMES_PER_JOB, media.num_frames)):
            if frame_key(media, f) not in self.cache:
                frames.append(f)
        pix = media.pixel_values[frames].reshape(-1, media.pixel_values.shape[-1])  # [F*P, 768]
        pos = media.position_ids[frames].reshape(-1, 2)  # [F*P, 2]
        lengths = [media.pixel_values.shape[1]] * len(frames)
        steps = self.vision.encode_steps(pix, pos, lengths, rows=self.rows_per_slice)
        return _Job(media, frames, [frame_key(media, f) for f in frames], steps)

    def _finish(self, embeds: torch.Tensor, requests: Sequence[Any]) -> None:
        job, self.job = self.job, None
        n = job.media.tokens_per_frame
        for i, key in enumerate(job.keys):
            holders = [r.request_id for r in requests if any(s.key == key for s in r.mm_spans)]
            self.cache.put(key, embeds[i * n : (i + 1) * n], holders)
        self.encoded_frames += len(job.keys)

    def cancel_if_orphaned(self, requests: Sequence[Any]) -> None:
        """Drop the running job when no request needs its frames any more (all aborted)."""
        if self.job is not None and not any(s.key in self.job.keys for r in requests for s in r.mm_spans):
            self.job = None


def media_embeddings(scheduled: Sequence[Any], cache: EncoderCache, device: torch.device):
    """For one step's ScheduledRequests in batch order: (rows [M] int64, embeds [M, H], blocks per
    sequence) of the media soft tokens among their new tokens, or None when there are none. The
    scheduler only schedules chunks that hold whole, ready spans."""
    rows: list[int] = []
    parts: list[torch.Tensor] = []
    blocks: list[list[tuple[int, int]]] = []
    offset = 0
    for s in scheduled:
        start, end = s.start, s.start + s.num_new_tokens
        mine = []
        for span in getattr(s.request, "mm_spans", ()):
            if span.end <= start or span.start >= end:
                continue
            assert start <= span.start and span.end <= end, "a media span was split across steps"
            rows.extend(range(offset + span.start - start, offset + span.end - start))
            parts.append(cache.get(span.key))
            mine.append((span.start, span.end))
        blocks.append(mine)
        offset += s.num_new_tokens
    if not rows:
        return None
    return (torch.tensor(rows, dtype=torch.int64, device=device), torch.cat(parts).to(device), blocks)
