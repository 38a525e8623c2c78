"""The `serve`, `hash-key` and `keys` subcommands; gemmaserve/cli.py calls add_serve_parser(subparsers)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

from gemmaserve.api.callers import is_open
from gemmaserve.api.cli_store import add_keys_parser, add_store_args, open_store_from_args
from gemmaserve.api.keys import MIN_KEY_CHARS, hash_key, load_key_hashes, new_key, read_key_file
from gemmaserve.api.loading import model_loader
from gemmaserve.api.state import ServerState
from gemmaserve.config import API_KEY_ENV, BASE_MODEL_ID, ServerConfig, add_engine_args, api_key_from_env

log = logging.getLogger("gemmaserve.serve")


def add_serve_parser(subparsers) -> None:
    """Register `serve` and `hash-key`; each sets `func(args) -> int` for main() to call."""
    p = subparsers.add_parser("serve", help="serve the OpenRouter-compatible HTTP API")
    add_engine_args(p)
    add_server_args(p)
    add_store_args(p)
    p.set_defaults(func=run_serve)

    h = subparsers.add_parser("hash-key", help="print the sha256 line for an --api-keys-file")
    h.add_argument("key", nargs="?", help="the key (read from stdin or a prompt when omitted)")
    h.add_argument("--generate", action="store_true",
                   help="make a new random key: the key goes to stderr, its sha256 line to stdout")
    h.set_defaults(func=run_hash_key)
    add_keys_parser(subparsers)


def add_server_args(p) -> None:
    """The HTTP server's options (everything server_config_from_args reads): `serve` and
    `cluster serve` both declare them here, so a new server option reaches every replica."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-key", help=f"the one accepted bearer key; it shows in the process list, so prefer "
                      f"${API_KEY_ENV}, --api-key-file or --api-keys-file")
    keys.add_argument("--api-key-file", help="file holding the one accepted bearer key (first line)")
    keys.add_argument("--api-keys-file", help="file of sha256 hex digests of accepted keys, one a line "
                      "(make them with `gemmaserve hash-key`)")
    p.add_argument("--served-model-name", default=BASE_MODEL_ID,
                   help=f"model id clients may send and /models lists (default {BASE_MODEL_ID})")
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-waiting", type=int, default=256, help="queued requests beyond this get 429")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-price", type=float, default=0.06, help="USD per million prompt tokens")
    p.add_argument("--completion-price", type=float, default=0.33, help="USD per million completion tokens")
    p.add_argument("--provider-name", default="gemmaserve")
    p.add_argument("--keepalive-interval", type=float, default=10.0,
                   help="seconds between `: OPENROUTER PROCESSING` comments before the first token")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--allow-remote-media", action="store_true",
                   help="fetch http(s) image/video URLs (public addresses only; off = data URLs only)")
    p.add_argument("--max-media-per-request", type=int, default=8, help="images + videos in one request")
    p.add_argument("--max-media-bytes", type=int, default=20 * 2**20,
                   help="bytes of one image or remote fetch (a video may take 2.5x)")
    p.add_argument("--max-video-seconds", type=float, default=60.0)
    p.add_argument("--max-video-frames", type=int, default=64, help="sampled frames per video")
    p.add_argument("--batch-price-factor", type=float, default=0.5,
                   help="share of the list price a /api/beta/batches item is billed at")
    p.add_argument("--batch-concurrency", type=int, default=8,
                   help="batch items in the engine at once (all batches together; background priority)")
    p.add_argument("--batch-max-requests", type=int, default=10_000, help="items per batch")
    p.add_argument("--response-cache-mb", type=int, default=64,
                   help="memory for X-OpenRouter-Cache answers (least recently used out first)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds for a request's headers (then 408)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds for a request's body (then 408)")
    p.add_argument("--keepalive-timeout", type=float, default=75.0, help="seconds an idle connection stays open")
    p.add_argument("--max-connections", type=int, default=2048, help="open connections beyond this are closed")
    p.add_argument("--max-concurrent-requests", type=int, default=512, help="requests in flight beyond this get 503")
    p.add_argument("--prep-workers", type=int, default=4, help="threads preparing requests (template, tokenizer, grammar)")
    p.add_argument("--prep-time-limit", type=float, default=10.0, help="seconds a request's preparation may take (then 400)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run_hash_key(args: argparse.Namespace) -> int:
    if args.generate:
        key = new_key()
        print(f"new API key (shown once; give it to the client): {key}", file=sys.stderr)
        print(hash_key(key))
        return 0
    key = args.key
    if key is None:
        key = sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("API key: ")
    if not key:
        print("error: empty key", file=sys.stderr)
        return 2
    if len(key) < MIN_KEY_CHARS:
        # The keys file holds unsalted sha256: safe for random keys (nothing to guess), not for a
        # short chosen one, which a leaked file gives away to a dictionary search.
        print(f"error: keys shorter than {MIN_KEY_CHARS} characters are refused (unsalted sha256 protects only "
              "random keys); use `gemmaserve hash-key --generate`", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    if args.api_keys_file:
        hashes = load_key_hashes(args.api_keys_file)
    elif args.api_key_file:
        hashes = frozenset({hash_key(read_key_file(args.api_key_file))})
    elif args.api_key:
        hashes = frozenset({hash_key(args.api_key)})
    elif api_key_from_env() is not None:
        hashes = frozenset({hash_key(api_key_from_env())})
    else:
        hashes = frozenset()
    # The cluster builds its own args without the store flags: no management keys there.
    mgmt_file = getattr(args, "management_keys_file", None)
    management = load_key_hashes(mgmt_file) if mgmt_file else frozenset()
    return ServerConfig(
        served_model_name=args.served_model_name,
        api_key_hashes=hashes,
        management_key_hashes=management,
        prompt_price_per_m=args.prompt_price,
        completion_price_per_m=args.completion_price,
        provider_name=args.provider_name,
        keepalive_interval_s=args.keepalive_interval,
        max_body_bytes=args.max_body_bytes,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        keepalive_timeout_s=args.keepalive_timeout,
        max_connections=args.max_connections,
        max_concurrent_requests=args.max_concurrent_requests,
        prep_workers=args.prep_workers,
        prep_time_limit_s=args.prep_time_limit,
        quantization=args.quantization,
        allow_remote_media=args.allow_remote_media,
        max_media_per_request=args.max_media_per_request,
        max_media_bytes=args.max_media_bytes,
        max_video_seconds=args.max_video_seconds,
        max_video_frames=args.max_video_frames,
        batch_price_factor=args.batch_price_factor,
        batch_concurrency=args.batch_concurrency,
        batch_max_requests=args.batch_max_requests,
        response_cache_bytes=args.response_cache_mb * 1024 * 1024,
    )


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gemmaserve.api.app import create_app
    from gemmaserve.api.http_server import uvicorn_config

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = server_config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store_from_args(args)
    except Exception as exc:  # a bad URL, an unreachable server, a failed migration
        print(f"error: cannot open the store: {exc}", file=sys.stderr)
        return 2
    if store is not None:
        log.info("store: %s", store.engine.url.render_as_string(hide_password=True))
    state = ServerState(config=config, loader=model_loader(args), store=store)
    if is_open(state):
        log.warning("no keys (--api-key/--api-keys-file, or `gemmaserve keys create`): the API is open to "
                    "anyone who can reach %s:%d", args.host, args.port)
    if args.api_key:
        log.warning("--api-key shows the key in the process list; prefer $%s or --api-key-file", API_KEY_ENV)
    app = create_app(state)
    try:
        uvicorn.Server(uvicorn_config(app, config, host=args.host, port=args.port, log_level=args.log_level)).run()
    finally:
        if store is not None:
            store.close()  # commits whatever is still queued
    return 0 if state.load_error is None else 1
