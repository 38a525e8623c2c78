"""Which endpoints serve a request, in which order: OpenRouter's provider routing (filters,
`order`, `sort`, load balancing that avoids recent failures, fallbacks, the `models` list) and
sticky sessions that keep a conversation on the replica holding its prefix cache. Pure Python."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable

from gemmaserve.cluster.endpoints import QUANTIZATIONS, Endpoint
from gemmaserve.cluster.stats import StatsBook

SORTS = ("price", "throughput", "latency")
_PRICE_KEYS = {"prompt": "prompt_price_per_m", "completion": "completion_price_per_m"}


class RoutingError(Exception):
    """No endpoint may serve the request: `status` 400 for an unknown model or a malformed
    `provider` object, 404 when the preferences filtered every endpoint out."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _slugs(prefs: dict[str, Any], key: str) -> tuple[str, ...] | None:
    v = prefs.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise RoutingError(400, f"Invalid value for 'provider.{key}': expected an array of strings", f"provider.{key}")
    return tuple(s.lower() for s in v)


@dataclass(frozen=True)
class ProviderPrefs:
    """The request's `provider` object (spec api §2.7), validated. Fields that cannot change the
    choice among our endpoints (data_collection, zdr, preferred_*) are accepted and ignored."""

    order: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    quantizations: frozenset[str] | None = None
    max_price: dict[str, float] = field(default_factory=dict)
    sort: str | None = None
    sort_across_models: bool = False  # sort.partition == "none"
    allow_fallbacks: bool = True
    require_parameters: bool = False

    @classmethod
    def parse(cls, prefs: Any) -> ProviderPrefs:
        if prefs is None:
            return cls()
        if not isinstance(prefs, dict):
            raise RoutingError(400, "Invalid value for 'provider': expected an object", "provider")
        quants = _slugs(prefs, "quantizations")
        if quants is not None and not set(quants) <= QUANTIZATIONS:
            raise RoutingError(400, f"Invalid value for 'provider.quantizations': use {', '.join(sorted(QUANTIZATIONS))}",
                               "provider.quantizations")
        max_price: dict[str, float] = {}
        raw_price = prefs.get("max_price")
        if raw_price is not None:
            if not isinstance(raw_price, dict):
                raise RoutingError(400, "Invalid value for 'provider.max_price': expected an object", "provider.max_price")
            for k, v in raw_price.items():
                try:  # numbers, or numeric strings as the current spec types them
                    max_price[k] = float(v)
                except (TypeError, ValueError):
                    raise RoutingError(400, f"Invalid value for 'provider.max_price.{k}': expected a number",
                                       f"provider.max_price.{k}") from None
        sort, across = prefs.get("sort"), False
        if isinstance(sort, dict):
            across = sort.get("partition") == "none"
            sort = sort.get("by")
        if sort is not None and sort not in SORTS:
            raise RoutingError(400, f"Invalid value for 'provider.sort': use {', '.join(SORTS)}", "provider.sort")
        for flag in ("allow_fallbacks", "require_parameters"):
            if flag in prefs and not isinstance(prefs[flag], bool):
                raise RoutingError(400, f"Invalid value for 'provider.{flag}': expected a boolean", f"provider.{flag}")
        return cls(order=_slugs(prefs, "order") or (), only=_slugs(prefs, "only"), ignore=_slugs(prefs, "ignore") or (),
                   quantizations=frozenset(quants) if quants is not None else None, max_price=max_price,
                   sort=sort, sort_across_models=across, allow_fallbacks=prefs.get("allow_fallbacks", True),
                   require_parameters=prefs.get("require_parameters", False))


@dataclass(frozen=True)
class RouteRequest:
    """What routing reads from one request."""

    models: tuple[str, ...]  # `model`, then the `models` fallbacks, without repeats
    prefs: ProviderPrefs = ProviderPrefs()
    parameters: frozenset[str] = frozenset()  # the request's parameters (for require_parameters)
    prompt_tokens: int = 0  # an estimate, for the context-length filter
    session_key: str | None = None  # session_id, or a hash of a long shared prompt prefix


def _any_match(ep: Endpoint, slugs: Iterable[str]) -> bool:
    return any(ep.matches(s) for s in slugs)


def admissible(ep: Endpoint, req: RouteRequest) -> str | None:
    """Why `ep` is filtered out for `req` (the preference that excludes it), or None."""
    p = req.prefs
    if p.only is not None and not _any_match(ep, p.only):
        return "provider.only"
    if _any_match(ep, p.ignore):
        return "provider.ignore"
    if p.quantizations is not None and ep.quantization not in p.quantizations:
        return "provider.quantizations"
    for key, attr in _PRICE_KEYS.items():
        if key in p.max_price and getattr(ep, attr) > p.max_price[key]:
            return f"provider.max_price.{key}"
    if p.require_parameters and ep.supported_parameters is not None and not req.parameters <= ep.supported_parameters:
        return "provider.require_parameters"
    if req.prompt_tokens >= ep.context_length:
        return "context_length"
    return None


class Router:
    """Plans the attempt order for a request and remembers sticky sessions.

    Invariants: a plan never holds an endpoint a filter excluded; with `allow_fallbacks: false` it
    holds, per model, only the `order` endpoints (or the single first choice); endpoints that
    failed within `cooldown_s` (or whose probe says down) come after every healthy one, except where
    `order` ranks them explicitly.
    """

    def __init__(self, endpoints: list[Endpoint], stats: StatsBook, *, cooldown_s: float = 30.0,
                 sticky_ttl_s: float = 600.0, rng: random.Random | None = None):
        self.endpoints = list(endpoints)
        self.stats = stats
        self.cooldown_s = cooldown_s
        self.sticky_ttl_s = sticky_ttl_s  # OpenRouter keeps a session on its endpoint ~10 minutes
        self.rng = rng or random.Random()
        self._sticky: dict[str, tuple[str, float]] = {}  # session key -> (tag, last used)

    def plan(self, req: RouteRequest, now: float) -> list[tuple[str, Endpoint]]:
        """(model, endpoint) pairs to try in order; raises RoutingError when there are none."""
        known = [m for m in req.models if any(m in ep.models for ep in self.endpoints)]
        if not known:
            raise RoutingError(400, f"{req.models[0] if req.models else 'model'} is not a valid model ID", "model")
        reasons: list[str] = []
        per_model: list[list[tuple[str, Endpoint]]] = []
        for model in known:
            ok = []
            for ep in self.endpoints:
                if model not in ep.models:
                    continue
                why = admissible(ep, req)
                if why is None:
                    ok.append(ep)
                else:
                    reasons.append(why)
            per_model.append([(model, ep) for ep in self._order(ok, req, now, first_model=model == known[0])])
        if req.prefs.sort is not None and req.prefs.sort_across_models:
            flat = [pair for group in per_model for pair in group]
            plan = [pair for _, pair in sorted(enumerate(flat), key=lambda ip: (self._sort_key(ip[1][1], req, now), ip[0]))]
            per_model = [plan]
        plan = [pair for group in per_model for pair in self._fallbacks(group, req)]
        if not plan:
            why = ", ".join(sorted(set(reasons))) or "no endpoint"
            raise RoutingError(404, f"No endpoints found that match your provider preferences ({why}).", why)
        return plan

    def _fallbacks(self, group: list[tuple[str, Endpoint]], req: RouteRequest) -> list[tuple[str, Endpoint]]:
        p = req.prefs
        if p.allow_fallbacks:
            return group
        if p.order:
            return [pair for pair in group if _any_match(pair[1], p.order)]
        return group[:1]

    def _sort_key(self, ep: Endpoint, req: RouteRequest, now: float) -> tuple:
        st = self.stats[ep.tag]
        down = st.recently_failed(now, self.cooldown_s)
        if req.prefs.sort == "price":
            return (down, ep.price())
        v = st.p50(now, req.prefs.sort or "latency")
        if v is None:  # no data yet: after those measured, in listing order
            return (down, 1, 0.0)
        return (down, 0, -v if req.prefs.sort == "throughput" else v)

    def _order(self, eps: list[Endpoint], req: RouteRequest, now: float, first_model: bool) -> list[Endpoint]:
        p = req.prefs
        if p.order:
            ranked = [ep for slug in p.order for ep in eps if ep.matches(slug)]
            ranked = list(dict.fromkeys(ranked))  # an endpoint named twice keeps its first rank
            rest = [ep for ep in eps if ep not in ranked]
            return ranked + self._balanced(rest, now)
        if p.sort is not None:
            return sorted(eps, key=lambda ep: self._sort_key(ep, req, now))  # stable: listing order breaks ties
        out = self._balanced(eps, now)
        sticky = self._sticky_tag(req.session_key, now) if first_model else None
        if sticky is not None:
            pinned = [ep for ep in out if ep.tag == sticky and not self.stats[ep.tag].recently_failed(now, self.cooldown_s)]
            out = pinned + [ep for ep in out if ep not in pinned]
        return out

    def _balanced(self, eps: list[Endpoint], now: float) -> list[Endpoint]:
        """Load balancing: healthy first, then cheapest, then fewest requests in flight; a random
        tie-break spreads equal replicas."""
        keyed = [(self.stats[ep.tag].recently_failed(now, self.cooldown_s), ep.price(),
                  self.stats[ep.tag].in_flight, self.rng.random(), i) for i, ep in enumerate(eps)]
        return [eps[k[-1]] for k in sorted(keyed)]

    def _sticky_tag(self, key: str | None, now: float) -> str | None:
        if key is None:
            return None
        got = self._sticky.get(key)
        if got is None or now - got[1] > self.sticky_ttl_s:
            self._sticky.pop(key, None)
            return None
        return got[0]

    def served(self, req: RouteRequest, ep: Endpoint, now: float) -> None:
        """Remember that `ep` answered this session, so its next turn goes there too."""
        if req.session_key is None or self.sticky_ttl_s <= 0:
            return
        self._sticky[req.session_key] = (ep.tag, now)
        if len(self._sticky) > 100_000:  # bound memory: drop the expired, then the oldest half
            live = sorted(((t, k) for k, (_, t) in self._sticky.items() if now - t <= self.sticky_ttl_s), reverse=True)
            keep = {k for _, k in live[:50_000]}
            self._sticky = {k: v for k, v in self._sticky.items() if k in keep}
