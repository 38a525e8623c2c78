"""Gemma 4 image processor, pixel-exact with transformers' PIL backend (Gemma4ImageProcessorPil):
decode with limits, composite alpha onto white, resize to the soft-token budget, 16x16 patches."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from gemmaserve.media.errors import MediaError
from gemmaserve.types import MediaInput

# The budgets the reference processor accepts (spec 8.6); anything else raises there too.
SUPPORTED_BUDGETS = (70, 140, 280, 560, 1120)
DEFAULT_IMAGE_BUDGET = 280
PATCH_SIZE = 16
POOLING = 3
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds checked before any pixel is decoded (a small file can hold a huge image)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000  # width x height of the first frame
    max_side: int = 16_384


def target_size(height: int, width: int, budget: int) -> tuple[int, int]:
    """transformers' get_aspect_ratio_preserving_size: the largest multiple-of-48 size of the same
    aspect that holds at most budget*9 patches; an extreme aspect keeps one 48-pixel side."""
    max_patches = budget * POOLING**2
    target_px = max_patches * PATCH_SIZE**2
    factor = math.sqrt(target_px / (height * width))
    side = POOLING * PATCH_SIZE
    th = int(math.floor(factor * height / side)) * side
    tw = int(math.floor(factor * width / side)) * side
    if th == 0 and tw == 0:
        raise MediaError("the image is too small to resize")
    longest = (max_patches // POOLING**2) * side
    if th == 0:
        th, tw = side, min(int(math.floor(width / height)) * side, longest)
    elif tw == 0:
        tw, th = side, min(int(math.floor(height / width)) * side, longest)
    return th, tw


def soft_tokens(height: int, width: int, budget: int) -> int:
    th, tw = target_size(height, width, budget)
    return (th // (POOLING * PATCH_SIZE)) * (tw // (POOLING * PATCH_SIZE))


def check_budget(budget: int) -> int:
    if budget not in SUPPORTED_BUDGETS:
        raise MediaError(f"max_soft_tokens must be one of {', '.join(map(str, SUPPORTED_BUDGETS))}, got {budget}")
    return budget


def to_rgb(img: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb: anything with alpha (or a transparency key) onto white."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """PNG/JPEG/WebP/GIF bytes -> an RGB image: first frame of an animation, EXIF orientation
    applied (as transformers' load_image does), alpha onto white. MediaError on anything else."""
    if len(data) > limits.max_bytes:
        raise MediaError(f"the image is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    try:
        img = Image.open(io.BytesIO(data))  # lazy: reads the header only
        if img.format not in IMAGE_FORMATS:
            raise MediaError(f"unsupported image format {img.format or 'unknown'}; send PNG, JPEG, WebP or GIF")
        w, h = img.size
        if w * h > limits.max_pixels or max(w, h) > limits.max_side:
            raise MediaError(f"the image is {w}x{h} pixels, over the limit of {limits.max_pixels} pixels "
                             f"and {limits.max_side} per side")
        img.seek(0)  # an animated GIF/WebP: the first frame only
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"the image data could not be decoded ({type(exc).__name__})") from exc


def resize_rgb(img: Image.Image, budget: int) -> np.ndarray:
    """RGB image -> uint8 [H', W', 3] at the budget's size (PIL bicubic; none when already there)."""
    th, tw = target_size(img.height, img.width, budget)
    if (th, tw) != (img.height, img.width):
        img = img.resize((tw, th), resample=Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def patchify(rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H, W, 3] (multiples of 16) -> pixels [P, 768] float32 in [0, 1], each patch flattened as
    (row, column, channel), row-major over patches; positions [P, 2] int64 (column, row)."""
    h, w, _ = rgb.shape
    ph, pw = h // PATCH_SIZE, w // PATCH_SIZE
    # The reference rescales in float64 then casts: the same float32 values bit for bit.
    x = (rgb.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = x.reshape(ph, PATCH_SIZE, pw, PATCH_SIZE, 3).transpose(0, 2, 1, 3, 4).reshape(ph * pw, -1)
    gx, gy = np.meshgrid(np.arange(pw), np.arange(ph), indexing="xy")
    pos = np.stack([gx, gy], -1).reshape(ph * pw, 2)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(pos.astype(np.int64))


def image_input(img: Image.Image, budget: int, source_hash: bytes) -> MediaInput:
    """One decoded RGB image -> the encoder's input at `budget` soft tokens at most."""
    pixels, pos = patchify(resize_rgb(img, check_budget(budget)))
    key = hashlib.sha256(b"image:%d:" % budget + source_hash).digest()
    return MediaInput("image", pixels[None], pos[None], key)


def load_image(data: bytes, budget: int = DEFAULT_IMAGE_BUDGET, limits: ImageLimits = ImageLimits()) -> MediaInput:
    """Image file bytes -> MediaInput (the content hash covers the bytes and the budget)."""
    check_budget(budget)
    return image_input(decode_image(data, limits), budget, hashlib.sha256(data).digest())
