"""Chat media parts -> typed media inputs: image_url / video_url / input_video parts are decoded and
processed (media/) into resolved template parts and MediaInputs; every bad input is a 400 naming the
part's field and the reason."""

from __future__ import annotations

from typing import Any

from gemmaserve.api.errors import APIError
from gemmaserve.api.state import ServerState
from gemmaserve.chat.render import resolved_media_part
from gemmaserve.media.errors import MediaError
from gemmaserve.media.image import DEFAULT_IMAGE_BUDGET, ImageLimits, check_budget, load_image
from gemmaserve.media.source import IMAGE_MIMES, VIDEO_MIMES, FetchPolicy, media_bytes
from gemmaserve.media.video import (
    DEFAULT_FRAME_BUDGET,
    DEFAULT_FRAMES,
    VideoLimits,
    VideoSampling,
    load_video,
)
from gemmaserve.types import MediaInput

# OpenRouter's image `detail` onto Gemma 4's budgets: "low" the smallest, "high" twice the default,
# "original" the largest; "auto" (or none) the request's default (280, or mm_processor_kwargs).
DETAIL_BUDGETS = {"low": 70, "high": 560, "original": 1120}
_IMAGE_TYPES = ("image_url",)
_VIDEO_TYPES = ("video_url", "input_video")


def _bad(field: str, reason: str) -> APIError:
    return APIError(400, f"{field}: {reason}", "invalid_request", {"param": field})


def _options(kwargs: dict[str, Any] | None) -> tuple[int, VideoSampling]:
    kw = dict(kwargs or {})
    known = {"max_soft_tokens", "video_max_soft_tokens", "num_frames", "fps"}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise _bad("mm_processor_kwargs", f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
    try:
        budget = int(kw.get("max_soft_tokens", DEFAULT_IMAGE_BUDGET))
        fps = kw.get("fps")
        frames = kw.get("num_frames", None if fps is not None else DEFAULT_FRAMES)
        if fps is not None and "num_frames" in kw:
            raise _bad("mm_processor_kwargs", "num_frames and fps are mutually exclusive")
        sampling = VideoSampling(num_frames=int(frames) if frames is not None else None,
                                 fps=float(fps) if fps is not None else None,
                                 budget=int(kw.get("video_max_soft_tokens", DEFAULT_FRAME_BUDGET)))
    except (TypeError, ValueError):
        raise _bad("mm_processor_kwargs", "options must be numbers") from None
    if (sampling.num_frames is not None and sampling.num_frames < 1) or (sampling.fps is not None and sampling.fps <= 0):
        raise _bad("mm_processor_kwargs", "num_frames and fps must be positive")
    try:
        check_budget(budget)
        check_budget(sampling.budget)
    except MediaError as exc:
        raise _bad("mm_processor_kwargs", exc.reason) from None
    return budget, sampling


def resolve_media(state: ServerState, messages: list[dict[str, Any]],
                  mm_kwargs: dict[str, Any] | None) -> list[MediaInput]:
    """Replace, in place, each image/video part of the template messages by a resolved part; returns
    the MediaInputs in prompt order. Audio parts and media outside user messages are refused."""
    cfg = state.config
    video_bytes = int(cfg.max_media_bytes * 2.5)
    policy = FetchPolicy(allow_remote=cfg.allow_remote_media, max_bytes=video_bytes)
    image_limits = ImageLimits(max_bytes=cfg.max_media_bytes)
    video_limits = VideoLimits(max_bytes=video_bytes, max_seconds=cfg.max_video_seconds, max_frames=cfg.max_video_frames)
    takes = bool(getattr(state.engine, "takes_media", False))
    budget, sampling = None, None
    media: list[MediaInput] = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            where = f"messages[{i}].content[{j}]"
            if kind == "input_audio":
                raise _bad(where, "audio input is not supported by this model (it has no audio tower)")
            if kind not in _IMAGE_TYPES + _VIDEO_TYPES:
                continue
            if not takes:
                raise _bad(where, "this server's model takes no images or video")
            if msg.get("role") != "user":
                raise _bad(where, "images and video are accepted in user messages only")
            if len(media) >= state.config.max_media_per_request:
                raise _bad(where, f"at most {state.config.max_media_per_request} images and videos per request")
            if budget is None:
                budget, sampling = _options(mm_kwargs)
            try:
                if kind in _IMAGE_TYPES:
                    field = f"{where}.image_url.url"
                    info = part.get("image_url") or {}
                    b = DETAIL_BUDGETS.get(info.get("detail") or "auto", budget)
                    item = load_image(media_bytes(info["url"], IMAGE_MIMES, policy), b, image_limits)
                    content[j] = resolved_media_part("image", item.prompt_text(), item)
                else:
                    info = part.get("video_url") or part.get("input_video") or {}
                    field = f"{where}.{'video_url' if part.get('video_url') else 'input_video'}.url"
                    item = load_video(media_bytes(info["url"], VIDEO_MIMES, policy), sampling, video_limits)
                    content[j] = resolved_media_part("video", item.prompt_text(), item)
            except MediaError as exc:
                raise _bad(exc.field or field, exc.reason) from None
            media.append(item)
    return media
