"""media/image.py against transformers' Gemma4ImageProcessorPil: pixel-exact patches and positions,
spec 8.6's soft-token table, every input mode the reference converts, and the decode limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from gemmaserve.media.errors import MediaError
from gemmaserve.media.image import ImageLimits, decode_image, load_image, soft_tokens, target_size

transformers = pytest.importorskip("transformers")
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil  # noqa: E402

# Spec 8.6: input W x H -> resized W x H : tokens.
COUNTS = [
    (70, 1024, 768, 432, 336, 63), (70, 1920, 1080, 528, 288, 66), (70, 224, 224, 384, 384, 64),
    (140, 1024, 768, 624, 480, 130), (140, 1920, 1080, 720, 384, 120), (140, 224, 224, 528, 528, 121),
    (280, 1024, 768, 912, 672, 266), (280, 1920, 1080, 1056, 576, 264), (280, 224, 224, 768, 768, 256),
    (560, 1024, 768, 1296, 960, 540), (560, 1920, 1080, 1488, 816, 527), (560, 224, 224, 1104, 1104, 529),
    (1120, 1024, 768, 1824, 1344, 1064), (1120, 1920, 1080, 2112, 1200, 1100), (1120, 224, 224, 1584, 1584, 1089),
]


@pytest.mark.parametrize("budget, w, h, rw, rh, n", COUNTS)
def test_counts_table(budget, w, h, rw, rh, n):
    assert target_size(h, w, budget) == (rh, rw)
    assert soft_tokens(h, w, budget) == n


def test_strip_fills_budget_as_reference():
    assert [soft_tokens(3, 900, b) for b in (70, 140, 280, 560, 1120)] == [70, 140, 280, 409, 579]


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    chans = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (h, w, chans), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if chans == 1 else arr, mode)


def _reference(data: bytes, budget: int, tmp_path) -> tuple[torch.Tensor, torch.Tensor]:
    # The processor fed a decoded PIL image (its convert_to_rgb composites alpha onto white; transformers'
    # load_image would drop alpha first), EXIF orientation applied as load_image does.
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    out = Gemma4ImageProcessorPil(max_soft_tokens=budget)([img], return_tensors="pt")
    valid = (out["image_position_ids"][0] != -1).all(-1)
    return out["pixel_values"][0][valid], out["image_position_ids"][0][valid]


def _assert_exact(data: bytes, budget: int, tmp_path) -> None:
    want_pix, want_pos = _reference(data, budget, tmp_path)
    got = load_image(data, budget)
    assert torch.equal(got.position_ids[0], want_pos.long())
    assert got.pixel_values.dtype == torch.float32
    assert torch.equal(got.pixel_values[0], want_pix.float())


@pytest.mark.parametrize("budget", [70, 280, 1120])
@pytest.mark.parametrize("size", [(200, 150), (97, 301), (768, 768), (1000, 20)])
def test_rgb_pixel_exact(budget, size, tmp_path):
    _assert_exact(_png(_noise(*size)), budget, tmp_path)


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "CMYK"])
def test_modes_pixel_exact(mode, tmp_path):
    img = _noise(120, 90, mode, seed=3)
    data = _png(img, "JPEG" if mode == "CMYK" else "PNG")
    _assert_exact(data, 140, tmp_path)


def test_rgba_composited_onto_white():
    img = Image.new("RGBA", (48, 48), (10, 20, 30, 0))  # fully transparent
    rgb = decode_image(_png(img))
    assert rgb.mode == "RGB" and rgb.getpixel((5, 5)) == (255, 255, 255)


def test_palette_with_transparency_pixel_exact(tmp_path):
    img = _noise(64, 64, seed=4).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    data = _png(img, transparency=0)
    assert decode_image(data).getpixel((0, 0)) is not None
    _assert_exact(data, 70, tmp_path)


def test_exif_rotation_applied(tmp_path):
    img = _noise(160, 80, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _png(img, "JPEG", exif=exif.tobytes())
    assert decode_image(data).size == (80, 160)
    _assert_exact(data, 70, tmp_path)


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (60, 40), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb = decode_image(buf.getvalue())
    assert rgb.getpixel((10, 10)) == (255, 0, 0)
    _assert_exact(buf.getvalue(), 70, tmp_path)


def test_webp_decodes():
    assert decode_image(_png(_noise(50, 50), "WEBP")).size == (50, 50)


def test_limits_and_bad_data():
    with pytest.raises(MediaError, match="could not be decoded"):
        decode_image(b"not an image at all")
    with pytest.raises(MediaError, match="byte limit"):
        decode_image(b"x" * 200, ImageLimits(max_bytes=100))
    big = _png(Image.new("RGB", (3000, 3000)))  # compresses to a few KB
    with pytest.raises(MediaError, match="pixels"):
        decode_image(big, ImageLimits(max_pixels=1_000_000))
    with pytest.raises(MediaError, match="format"):
        decode_image(_png(_noise(20, 20), "BMP"))
    with pytest.raises(MediaError, match="max_soft_tokens"):
        load_image(_png(_noise(20, 20)), budget=100)


def test_truncated_png_is_a_media_error():
    data = _png(_noise(200, 200))
    with pytest.raises(MediaError):
        decode_image(data[: len(data) // 2])


def test_prompt_text_and_hash():
    a = load_image(_png(_noise(100, 100)), 70)
    b = load_image(_png(_noise(100, 100)), 140)
    assert a.prompt_text() == "<|image>" + "<|image|>" * a.tokens_per_frame + "<image|>"
    assert a.content_hash != b.content_hash  # the budget is part of the key
    assert load_image(_png(_noise(100, 100)), 70).content_hash == a.content_hash
