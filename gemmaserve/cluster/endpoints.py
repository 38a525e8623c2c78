"""What the router chooses between: endpoints (engine replicas and upstream providers) and the
providers file that declares the upstream ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The parameters an engine replica accepts: the replica's own app reports the same list on its
# model page, so `require_parameters` here and there agree.
QUANTIZATIONS = frozenset(
    {"int4", "int8", "fp4", "mxfp4", "nvfp4", "fp6", "fp8", "mxfp8", "fp16", "bf16", "fp32", "unknown"})


@dataclass(frozen=True)
class Endpoint:
    """One place a request can be served.

    `tag` is OpenRouter's endpoint slug, `provider/variant` (e.g. `gemmaserve/replica-0`,
    `deepinfra/bf16`); `provider.only/ignore/order` entries match it whole or by its provider part.
    Upstream endpoints carry the base URL (up to `/api/v1` or `/v1`) and key they are called with;
    replicas are reached through their Ray Serve deployment, named by `deployment`.
    """

    tag: str
    models: frozenset[str]  # the public model ids this endpoint serves
    prompt_price_per_m: float = 0.0  # USD per million tokens
    completion_price_per_m: float = 0.0
    quantization: str = "bf16"
    context_length: int = 262_144
    supported_parameters: frozenset[str] | None = None  # None: everything the request may carry
    deployment: str | None = None  # Ray Serve deployment name (replicas)
    base_url: str | None = None  # upstream providers
    api_key: str | None = field(default=None, repr=False)
    upstream_model: str | None = None  # the model id sent upstream (default: the request's)

    def __post_init__(self) -> None:
        if not self.tag or self.tag != self.tag.strip() or self.tag.count("/") > 1:
            raise ValueError(f"endpoint tag must be 'provider' or 'provider/variant', got {self.tag!r}")
        if (self.deployment is None) == (self.base_url is None):
            raise ValueError(f"endpoint {self.tag}: give exactly one of deployment or base_url")
        if self.prompt_price_per_m < 0 or self.completion_price_per_m < 0:
            raise ValueError(f"endpoint {self.tag}: prices must be non-negative")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"endpoint {self.tag}: quantization must be one of {sorted(QUANTIZATIONS)}")
        if self.context_length <= 0:
            raise ValueError(f"endpoint {self.tag}: context_length must be positive")
        if not self.models:
            raise ValueError(f"endpoint {self.tag}: serves no model")

    @property
    def provider(self) -> str:
        return self.tag.split("/")[0].lower()

    @property
    def is_replica(self) -> bool:
        return self.deployment is not None

    def matches(self, slug: str) -> bool:
        """OpenRouter's slug rule: `deepinfra` names all DeepInfra endpoints, `deepinfra/turbo` one."""
        s = slug.strip().lower()
        return s == self.tag.lower() if "/" in s else s == self.provider

    def price(self) -> float:
        """The sort key for `sort: price`: prompt plus completion price per million tokens."""
        return self.prompt_price_per_m + self.completion_price_per_m


_PROVIDER_KEYS = {"tag", "base_url", "api_key", "api_key_file", "model", "models", "prompt_price",
                  "completion_price", "quantization", "context_length", "supported_parameters"}


def load_providers(path: str | Path, default_models: frozenset[str]) -> list[Endpoint]:
    """Read a providers file: JSON `{"providers": [{tag, base_url, api_key | api_key_file, model,
    models, prompt_price, completion_price, quantization, context_length, supported_parameters}]}`.
    `model` is the id sent upstream; `models` the public ids it serves (default: ours)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON: {exc}") from None
    entries = doc.get("providers") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{p}: expected {{\"providers\": [...]}}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not {"tag", "base_url"} <= e.keys():
            raise ValueError(f"{p}: providers[{i}] needs at least tag and base_url")
        unknown = set(e) - _PROVIDER_KEYS
        if unknown:
            raise ValueError(f"{p}: providers[{i}] has unknown keys {sorted(unknown)}")
        key = e.get("api_key")
        if e.get("api_key_file"):
            key = (p.parent / e["api_key_file"]).read_text(encoding="utf-8").strip()
        params = e.get("supported_parameters")
        out.append(Endpoint(
            tag=str(e["tag"]), models=frozenset(e.get("models") or default_models),
            prompt_price_per_m=float(e.get("prompt_price", 0.0)),
            completion_price_per_m=float(e.get("completion_price", 0.0)),
            quantization=str(e.get("quantization", "unknown")),
            context_length=int(e.get("context_length", 262_144)),
            supported_parameters=frozenset(params) if params is not None else None,
            base_url=str(e["base_url"]).rstrip("/"), api_key=key, upstream_model=e.get("model"),
        ))
    tags = [ep.tag.lower() for ep in out]
    if len(set(tags)) != len(tags):
        raise ValueError(f"{p}: endpoint tags must be unique")
    return out


def describe(ep: Endpoint) -> dict[str, Any]:
    """The static half of an /endpoints row (the live half comes from stats)."""
    return {"tag": ep.tag, "provider_name": ep.tag, "quantization": ep.quantization,
            "context_length": ep.context_length, "kind": "replica" if ep.is_replica else "upstream"}
