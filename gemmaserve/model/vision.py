"""Gemma 4 vision encoder (patch embedding, axial 2-D RoPE ViT, 3x3 pooling, standardize) and
`embed_vision`: processor patches -> soft-token embeddings in the text model's hidden space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gemmaserve.model.layers import Linear, RMSNorm, empty_param
from gemmaserve.ops.linear import linear
from gemmaserve.ops.norm import rms_norm
from gemmaserve.ops.rope import apply_rope

VISION_PREFIX = "model.vision_tower."
EMBED_PREFIX = "model.embed_vision."


@dataclass(frozen=True)
class Gemma4VisionConfig:
    """The checkpoint's `vision_config` (spec 2.3). The budget is not here: it comes from the
    processor (spec 8.6)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    head_dim: int
    patch_size: int = 16
    pooling_kernel_size: int = 3
    position_embedding_size: int = 10240
    rope_theta: float = 100.0
    rms_norm_eps: float = 1e-6
    standardize: bool = True
    text_hidden_size: int = 2816  # embed_vision's output width
    image_token_id: int = 258_880  # the soft-token ids the embeddings replace (config.json top level)
    video_token_id: int = 258_884

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Gemma4VisionConfig | None":
        """From a whole config.json dict; None when it has no vision tower."""
        vc = raw.get("vision_config")
        if not vc:
            return None
        if vc.get("use_clipped_linears"):
            raise ValueError("vision towers with clipped linears (E-models) are not supported")
        if int(vc.get("num_key_value_heads", vc["num_attention_heads"])) != int(vc["num_attention_heads"]):
            raise ValueError("the vision tower has no grouped-query attention")
        rope = vc.get("rope_parameters") or {}
        return cls(
            hidden_size=int(vc["hidden_size"]),
            intermediate_size=int(vc["intermediate_size"]),
            num_hidden_layers=int(vc["num_hidden_layers"]),
            num_attention_heads=int(vc["num_attention_heads"]),
            head_dim=int(vc.get("head_dim") or vc["hidden_size"] // vc["num_attention_heads"]),
            patch_size=int(vc.get("patch_size", 16)),
            pooling_kernel_size=int(vc.get("pooling_kernel_size", 3)),
            position_embedding_size=int(vc.get("position_embedding_size", 10240)),
            rope_theta=float(rope.get("rope_theta", 100.0)),
            rms_norm_eps=float(vc.get("rms_norm_eps", 1e-6)),
            standardize=bool(vc.get("standardize", True)),
            text_hidden_size=int(raw["text_config"]["hidden_size"]),
            image_token_id=int(raw.get("image_token_id", 258_880)),
            video_token_id=int(raw.get("video_token_id", 258_884)),
        )

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch_size**2


class _ClippableLinear(nn.Module):
    """transformers' Gemma4ClippableLinear without clipping: only the `.linear.weight` name segment."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.linear = Linear(in_features, out_features, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class _VisionAttention(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        h, d, n = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads
        self.num_heads, self.head_dim, self.eps = n, d, cfg.rms_norm_eps
        self.q_proj = _ClippableLinear(h, n * d, dtype, device)
        self.k_proj = _ClippableLinear(h, n * d, dtype, device)
        self.v_proj = _ClippableLinear(h, n * d, dtype, device)
        self.o_proj = _ClippableLinear(n * d, h, dtype, device)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype, device)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype, device)

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """x [R, H] -> q, k, v [R, n, d]: q/k RMSNorm with weight then axial RoPE, v weightless norm."""
        r, n, d = x.shape[0], self.num_heads, self.head_dim
        q = _axial_rope(rms_norm(self.q_proj(x).view(r, n, d), self.q_norm.weight, self.eps), rope)
        k = _axial_rope(rms_norm(self.k_proj(x).view(r, n, d), self.k_norm.weight, self.eps), rope)
        return q, k, rms_norm(self.v_proj(x).view(r, n, d), None, self.eps)

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One image's patches [P_i, n, d] each, bidirectional, scale 1.0 -> [P_i, n, d]. Only valid
        patches: the reference's padded run masks padding keys and drops padded queries, so the
        unpadded run gives the same rows."""
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                           v.transpose(0, 1)[None], scale=1.0)  # [1, n, P_i, d]
        return o[0].transpose(0, 1)


class _VisionMLP(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        h, w = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _ClippableLinear(h, w, dtype, device)
        self.up_proj = _ClippableLinear(h, w, dtype, device)
        self.down_proj = _ClippableLinear(w, h, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two separate bf16 roundings (gelu, then the product), as transformers' MLP computes it.
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class _VisionLayer(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.eps = eps
        self.self_attn = _VisionAttention(cfg, dtype, device)
        self.mlp = _VisionMLP(cfg, dtype, device)
        self.input_layernorm = RMSNorm(h, eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype, device)
        self.pre_feedforward_layernorm = RMSNorm(h, eps, dtype, device)
        self.post_feedforward_layernorm = RMSNorm(h, eps, dtype, device)

    def steps(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], lengths: list[int], rows: int):
        """The layer on x [P, H] in slices of at most `rows` rows (projections, MLP, attention query
        rows of one image), yielding between slices; returns the new [P, H]. Every op is row-independent,
        so slices agree with the whole-tensor run up to the matmul kernels' summation order."""
        p, attn = x.shape[0], self.self_attn
        n, d = attn.num_heads, attn.head_dim
        q, k, v = (x.new_empty(p, n, d) for _ in range(3))
        for a in range(0, p, rows):
            b = min(a + rows, p)
            q[a:b], k[a:b], v[a:b] = attn.project(self.input_layernorm(x[a:b]), tuple(t[a:b] for t in rope))
            yield
        o = torch.empty_like(q)
        if rows >= p and len(set(lengths)) == 1 and len(lengths) > 1:
            # Unsliced frames of one video (equal patch counts): one batched SDPA call for all of them.
            f, n_p = len(lengths), lengths[0]
            qf, kf, vf = (t.view(f, n_p, n, d).transpose(1, 2) for t in (q, k, v))  # [F, n, P_i, d]
            o = F.scaled_dot_product_attention(qf, kf, vf, scale=1.0).transpose(1, 2).reshape(p, n, d)
            lengths = []  # done
            yield
        start = 0
        for n_p in lengths:  # each image attends over its own patches; query rows in slices
            sl = slice(start, start + n_p)
            for a in range(start, start + n_p, rows):
                b = min(a + rows, start + n_p)
                o[a:b] = attn.attend(q[a:b], k[sl], v[sl])
                yield
            start += n_p
        del q, k, v
        out = torch.empty_like(x)
        for a in range(0, p, rows):
            b = min(a + rows, p)
            h = x[a:b] + self.post_attention_layernorm(attn.o_proj(o[a:b].reshape(b - a, n * d)))
            out[a:b] = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
            yield
        return out


class _PatchEmbedder(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.input_proj = Linear(cfg.patch_dim, cfg.hidden_size, dtype, device)
        self.position_embedding_table = empty_param(2, cfg.position_embedding_size, cfg.hidden_size, dtype=dtype,
                                                    device=device)

    def forward(self, pixels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # pixels [P, 768] fp32 in [0, 1]; positions [P, 2] (x = column, y = row) -> [P, H]
        w = self.input_proj.weight
        h = linear((2 * (pixels.float() - 0.5)).to(w.dtype), w)  # the shift runs in fp32, then the cast
        table = self.position_embedding_table
        return h + (table[0][positions[:, 0]] + table[1][positions[:, 1]])  # x and y summed first


class _VisionEncoder(nn.Module):
    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_VisionLayer(cfg, dtype, device) for _ in range(cfg.num_hidden_layers))


class Gemma4VisionTower(nn.Module):
    """state_dict keys are the checkpoint's `model.vision_tower.` names without that prefix."""

    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embedder = _PatchEmbedder(cfg, dtype, device)
        self.encoder = _VisionEncoder(cfg, dtype, device)
        if cfg.standardize:
            self.register_buffer("std_bias", torch.empty(cfg.hidden_size, dtype=dtype, device=device))
            self.register_buffer("std_scale", torch.empty(cfg.hidden_size, dtype=dtype, device=device))
        spatial = cfg.head_dim // 2  # channels per axis; 18 frequencies each for head_dim 72
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial))
        self.register_buffer("inv_freq", inv.to(device), persistent=False)

    def steps(self, pixels: torch.Tensor, positions: torch.Tensor, lengths: list[int], rows: int = 1 << 30):
        """Generator: pixels [P, 768] fp32, positions [P, 2] int64 for the valid patches of several
        images end to end (lengths[i] patches each, a multiple of 9); yields between slices of work
        (see _VisionLayer.steps) and returns [sum(lengths) / 9, H] pooled, standardized soft tokens
        in the weight dtype, row-major over each image's pooled grid."""
        cfg = self.config
        p = pixels.shape[0]
        x = pixels.new_empty(p, cfg.hidden_size, dtype=self.patch_embedder.input_proj.weight.dtype)  # [P, H]
        for a in range(0, p, rows):  # the embedding is sliced too: it is a 768 -> H matmul over every patch
            x[a : a + rows] = self.patch_embedder(pixels[a : a + rows], positions[a : a + rows])
            yield
        rope = self._rope(positions, x.dtype)
        for layer in self.encoder.layers:
            x = yield from layer.steps(x, rope, lengths, rows)
        k = cfg.pooling_kernel_size
        pooled = []
        start = 0
        for n_p in lengths:
            pos = positions[start : start + n_p]  # [P_i, 2]
            n_out = n_p // (k * k)
            grid_w = int(pos[:, 0].max()) + 1  # patch columns
            slot = pos[:, 0] // k + (grid_w // k) * (pos[:, 1] // k)  # [P_i] pooled cell, row-major
            # One-hot matmul in fp32 like the reference (its summation order), then back to the dtype.
            weights = F.one_hot(slot, n_out).float() / (k * k)  # [P_i, N_i]
            pooled.append((weights.t() @ x[start : start + n_p].float()).to(x.dtype))  # [N_i, H]
            start += n_p
        h = torch.cat(pooled).float() * cfg.hidden_size**0.5  # fp32: the scale can exceed fp16's range
        if cfg.standardize:
            h = (h - self.std_bias.float()) * self.std_scale.float()
        return h.to(x.dtype)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        # Axial RoPE: the first head_dim/2 channels rotate with the column index, the rest with the
        # row index, rotate-half within each half; angles in fp32, cast to the activation dtype.
        out = []
        for axis in (0, 1):
            f = positions[:, axis].float()[:, None] * self.inv_freq[None, :]  # [P, d/4]
            emb = torch.cat([f, f], dim=-1)  # [P, d/2]
            out += [emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]]  # [P, 1, d/2]
        return tuple(out)


def _axial_rope(x: torch.Tensor, rope: tuple[torch.Tensor, ...]) -> torch.Tensor:
    # x [P, n, d] -> [P, n, d]
    cx, sx, cy, sy = rope
    half = x.shape[-1] // 2
    return torch.cat([apply_rope(x[..., :half], cx, sx), apply_rope(x[..., half:], cy, sy)], dim=-1)


class Gemma4VisionEmbedder(nn.Module):
    """`embed_vision`: weightless RMSNorm (fp32 inside) then Linear vision hidden -> text hidden; no sqrt(H)."""

    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.eps = cfg.rms_norm_eps
        self.embedding_projection = Linear(cfg.hidden_size, cfg.text_hidden_size, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(rms_norm(x, None, self.eps))


class VisionEncoder(nn.Module):
    """Tower and projector together: `encode` turns processor patches into the text embeddings that
    replace the image (or video frame) soft-token placeholders."""

    def __init__(self, cfg: Gemma4VisionConfig, dtype: torch.dtype = torch.bfloat16, device="cpu") -> None:
        super().__init__()
        self.config = cfg
        self.dtype = dtype
        self.vision_tower = Gemma4VisionTower(cfg, dtype, device)
        self.embed_vision = Gemma4VisionEmbedder(cfg, dtype, device)

    @property
    def device(self) -> torch.device:
        return self.embed_vision.embedding_projection.weight.device

    def encode(self, pixels: torch.Tensor, positions: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """See Gemma4VisionTower.steps; returns [sum(lengths) / 9, text_hidden] in the weight dtype."""
        job = self.encode_steps(pixels, positions, lengths)
        with torch.inference_mode():
            while True:
                try:
                    next(job)
                except StopIteration as done:
                    return done.value

    def encode_steps(self, pixels: torch.Tensor, positions: torch.Tensor, lengths: list[int], rows: int = 1 << 30):
        """The same work as a generator that yields between slices of at most `rows` patch rows, so a caller can interleave it with other work; returns what encode
        returns. Inputs are checked before the first slice. The caller runs each slice under
        torch.inference_mode() (a context entered inside a generator would leak across its yields)."""
        bad = [n for n in lengths if n <= 0 or n % self.config.pooling_kernel_size**2]
        if bad or sum(lengths) != pixels.shape[0] or positions.shape != (pixels.shape[0], 2):
            raise ValueError(f"patch counts {lengths} do not fit pixels {tuple(pixels.shape)}")
        if positions.numel() and int(positions.max()) >= self.config.position_embedding_size:
            raise ValueError(f"an image {int(positions.max()) + 1} patches long exceeds the vision tower's "
                             f"position table ({self.config.position_embedding_size})")
        return self._steps(pixels.to(self.device), positions.to(self.device).long(), lengths, rows)

    def _steps(self, pixels: torch.Tensor, positions: torch.Tensor, lengths: list[int], rows: int):
        h = yield from self.vision_tower.steps(pixels, positions, lengths, rows)
        return self.embed_vision(h)

    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> "VisionEncoder":
        """Random weights for --dummy-weights (norms ~1, matrices fan-in scaled)."""
        gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            if name.endswith("inv_freq"):
                continue
            if t.dim() == 1:
                t.normal_(1.0 if not name.endswith("std_bias") else 0.0, 0.1, generator=gen)
            elif name.endswith("position_embedding_table"):
                t.normal_(0.0, 0.02, generator=gen)
            else:
                t.normal_(0.0, t.shape[-1] ** -0.5, generator=gen)
        return self
