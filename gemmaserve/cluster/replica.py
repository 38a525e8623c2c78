"""One engine replica as a Ray Serve deployment: its own engine and KV cache behind the full
gemmaserve API app, answering the requests the ingress hands it over Ray."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, AsyncIterator

log = logging.getLogger("gemmaserve.cluster")


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica is built from: the `serve` options (a dict of its argparse namespace), the
    endpoint tag it answers as, and its torch thread count (its CPU share)."""

    serve_args: dict[str, Any]
    tag: str
    threads: int = 1


class EngineReplica:
    """The replica. The engine loads in the constructor (Ray Serve counts the replica as starting
    until it returns); `check_health` is Ray Serve's health probe: a raise makes Serve replace the
    replica, as does the process dying."""

    def __init__(self, spec: ReplicaSpec):
        import torch

        from gemmaserve.api.app import create_app
        from gemmaserve.api.cli_serve import server_config_from_args
        from gemmaserve.api.loading import install, model_loader
        from gemmaserve.api.state import ServerState

        torch.set_num_threads(max(1, spec.threads))
        args = argparse.Namespace(**spec.serve_args)
        # The ingress checks keys; the replica answers only the ingress, under its endpoint tag.
        config = dataclasses.replace(server_config_from_args(args), provider_name=spec.tag, api_key_hashes=frozenset())
        self.state = ServerState(config=config)
        install(self.state, model_loader(args)())
        self.app = create_app(self.state)
        self.tag = spec.tag
        log.info("replica %s ready (pid %d, %d threads)", spec.tag, os.getpid(), spec.threads)

    async def forward(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                      body: bytes) -> AsyncIterator[Any]:
        """Stream one request's response: a head dict, then body chunks (see asgi_stream)."""
        from gemmaserve.cluster.asgi_call import asgi_stream

        async for item in asgi_stream(self.app, method, path, query, headers, body):
            yield item

    def pid(self) -> int:
        return os.getpid()

    def load(self) -> dict[str, Any]:
        """The engine's queue and cache snapshot (for /endpoints and tests)."""
        s = self.state.engine.stats()
        return {"running": s.num_running, "waiting": s.num_waiting, "kv_usage": s.kv_usage,
                "prefix_cache_hit_rate": s.prefix_cache_hit_rate}

    async def check_health(self) -> None:
        if not self.state.ready:
            raise RuntimeError(f"replica {self.tag}: engine not ready")

    async def __del__(self) -> None:
        # Serve awaits an async __del__ on a graceful stop: end the engine's loop thread with it.
        engine = getattr(getattr(self, "state", None), "engine", None)
        if engine is not None:
            await engine.shutdown()
