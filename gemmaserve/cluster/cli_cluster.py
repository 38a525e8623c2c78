"""`gemmaserve cluster serve`: start or join a Ray cluster, deploy N engine replicas and the
OpenRouter-compatible ingress on Ray Serve, and serve until interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from gemmaserve.api.cli_serve import add_server_args
from gemmaserve.config import add_engine_args

log = logging.getLogger("gemmaserve.cluster")


def _add_options(p: argparse.ArgumentParser) -> None:
    add_engine_args(p)
    p.add_argument("--config", help="JSON file of these options by long name (e.g. {\"replicas\": 2}); flags override")
    p.add_argument("--replicas", type=int, default=1, help="engine replicas, each its own endpoint (default 1)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPU share of each replica")
    p.add_argument("--threads-per-replica", type=int, default=1, help="torch threads in each replica")
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--autoscale-max", type=int, default=None,
                   help="let Ray Serve grow each replica endpoint up to this many copies on queue depth")
    p.add_argument("--autoscale-target", type=float, default=16.0,
                   help="target ongoing requests per copy when autoscaling (Serve's target_ongoing_requests)")
    p.add_argument("--no-sticky", action="store_true",
                   help="no sticky sessions (each request balanced afresh; for measuring what stickiness buys)")
    p.add_argument("--providers", help="JSON providers file of upstream endpoints (see README)")
    p.add_argument("--address", help="join this Ray cluster (e.g. 'auto' after `ray start --head`); "
                   "default: start a local one")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray's CPU count (default: the machine's)")
    p.add_argument("--object-store-mb", type=int, default=128, help="local Ray's object store size")
    add_server_args(p)


def add_cluster_parser(subparsers) -> None:
    """Register `cluster serve`; sets `func(args) -> int` like the other subcommands."""
    c = subparsers.add_parser("cluster", help="many replicas behind one endpoint, on Ray Serve")
    sub = c.add_subparsers(dest="cluster_command", required=True)
    s = sub.add_parser("serve", help="deploy replicas and the ingress; serve until interrupted")
    _add_options(s)
    s.set_defaults(func=run_cluster_serve)


def build_parser() -> argparse.ArgumentParser:
    """The `cluster serve` options alone (deploy.app_builder parses its config with it)."""
    p = argparse.ArgumentParser(prog="gemmaserve cluster serve")
    _add_options(p)
    return p


def spec_from_args(args: argparse.Namespace):
    """ClusterSpec from parsed options (a --config file supplies defaults the flags override)."""
    from gemmaserve.api.cli_serve import server_config_from_args
    from gemmaserve.cluster.deploy import ClusterSpec
    from gemmaserve.cluster.endpoints import load_providers
    from gemmaserve.cluster.ingress import IngressConfig

    if args.config:
        cfg = json.loads(Path(args.config).read_text(encoding="utf-8"))
        for key, value in cfg.items():
            dest = key.replace("-", "_")
            if not hasattr(args, dest):
                raise ValueError(f"{args.config}: unknown option {key!r}")
            setattr(args, dest, value)
    args.provider_name = "gemmaserve"
    server = server_config_from_args(args)
    serve_args = {k: v for k, v in vars(args).items() if k != "func"}
    serve_args.update(api_key=None, api_key_file=None, api_keys_file=None)  # the ingress checks keys, not the replicas
    models = server.accepted_model_ids
    upstream = tuple(load_providers(args.providers, models)) if args.providers else ()
    autoscaling = None
    if args.autoscale_max:
        autoscaling = {"min_replicas": 1, "max_replicas": args.autoscale_max,
                       "target_ongoing_requests": args.autoscale_target,
                       "upscale_delay_s": 10.0, "downscale_delay_s": 120.0}
    return ClusterSpec(
        serve_args=serve_args, replicas=args.replicas, cpus_per_replica=args.cpus_per_replica,
        threads_per_replica=args.threads_per_replica, gpus_per_replica=args.gpus_per_replica,
        autoscaling=autoscaling, upstream=upstream, model_ids=models,
        ingress=IngressConfig(default_model=args.served_model_name, api_key_hashes=server.api_key_hashes,
                              max_body_bytes=args.max_body_bytes, sticky_ttl_s=0.0 if args.no_sticky else 600.0),
        context_length=args.max_model_len or 262_144, quantization=args.quantization or "bf16",
        prompt_price_per_m=args.prompt_price, completion_price_per_m=args.completion_price,
    )


def start_ray(address: str | None, num_cpus: int | None, object_store_mb: int) -> None:
    """Join `address`, or start a small local Ray (no dashboard, a small object store: the
    replicas pass only bytes of HTTP through it)."""
    import ray

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, object_store_memory=object_store_mb * 2**20, include_dashboard=False,
                 log_to_driver=False)


def run_cluster_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from gemmaserve.cluster.deploy import APP_NAME, build_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = spec_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start_ray(args.address, args.num_cpus, args.object_store_mb)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(spec), name=APP_NAME, route_prefix="/")
        print(f"gemmaserve cluster: {spec.replicas} replica(s) + {len(spec.upstream)} upstream on "
              f"http://{args.host}:{args.port}", flush=True)
        stop.wait()
    finally:
        if args.address:
            serve.delete(APP_NAME)  # leave the joined cluster as it was
        else:
            serve.shutdown()
        ray.shutdown()
    return 0
