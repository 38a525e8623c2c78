"""Stateless tensor functions (paged attention, MoE experts, norms, RoPE) with plain-torch paths."""
