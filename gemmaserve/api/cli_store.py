"""The store's command line: `serve` flags (--data-dir, --database-url, --no-store,
--store-content, --management-keys-file) and the `keys` subcommand (create, list)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from gemmaserve.config import default_data_dir
from gemmaserve.store import Store, StoreOptions


def add_store_args(p: argparse.ArgumentParser, *, serving: bool = True) -> None:
    p.add_argument("--data-dir", default=None,
                   help=f"directory of the embedded SQLite database (default {default_data_dir()}, "
                        "or $GEMMASERVE_DATA_DIR)")
    p.add_argument("--database-url", default=None,
                   help="a SQLAlchemy URL instead of SQLite, e.g. postgresql+psycopg://user:pass@host/db")
    if serving:
        p.add_argument("--no-store", action="store_true",
                       help="keep nothing durable: in-memory /generation records, no keys API, no stats")
        p.add_argument("--store-content", action="store_true",
                       help="keep prompts and outputs for GET /api/v1/generation/content")
        p.add_argument("--management-keys-file", default=None,
                       help="file of sha256 hex digests of management keys, one a line (besides stored ones)")


def open_store_from_args(args: argparse.Namespace) -> Store | None:
    """The Store the flags ask for (migrated and loaded), or None with --no-store."""
    if getattr(args, "no_store", False):
        return None
    options = StoreOptions(store_content=getattr(args, "store_content", False))
    return Store.open(args.data_dir or (None if args.database_url else default_data_dir()), args.database_url, options)


def add_keys_parser(subparsers) -> None:
    p = subparsers.add_parser("keys", help="make and list API keys in the store")
    sub = p.add_subparsers(dest="keys_command", required=True)
    c = sub.add_parser("create", help="make a key and print its plaintext (shown only this once)")
    add_store_args(c, serving=False)
    c.add_argument("--name", default="")
    c.add_argument("--management", action="store_true",
                   help="a management key: calls /api/v1/keys, /credits, /activity, never inference")
    c.add_argument("--limit", type=float, default=None, help="spending limit in USD")
    c.add_argument("--limit-reset", choices=["daily", "weekly", "monthly"], default=None)
    c.add_argument("--expires-at", default=None, help="UTC ISO time after which the key stops working")
    c.set_defaults(func=run_keys_create)
    ls = sub.add_parser("list", help="list stored keys (hash, name, kind, limit, status)")
    add_store_args(ls, serving=False)
    ls.set_defaults(func=run_keys_list)


def run_keys_create(args: argparse.Namespace) -> int:
    try:
        expires = None
        if args.expires_at:
            expires = datetime.fromisoformat(args.expires_at.replace("Z", "+00:00"))
            expires = expires.replace(tzinfo=timezone.utc) if expires.tzinfo is None else expires
        store = open_store_from_args(args)
        assert store is not None
        try:
            rec, plaintext = store.create_key(args.name or ("management" if args.management else "key"),
                                              is_management=args.management, limit=args.limit,
                                              limit_reset=args.limit_reset, expires_at=expires)
        finally:
            store.close()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(plaintext)
    print(f"hash {rec.hash} ({'management' if rec.is_management else 'inference'} key)", file=sys.stderr)
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    store = open_store_from_args(args)
    assert store is not None
    try:
        for management in (True, False):
            for k in store.list_keys(management=management, include_disabled=True):
                kind = "management" if k.is_management else "inference"
                limit = "-" if k.limit is None else f"{k.limit}/{k.limit_reset or 'total'}"
                print(f"{k.hash}  {kind:10}  {k.name:20}  limit={limit}  {'disabled' if k.disabled else 'active'}")
    finally:
        store.close()
    return 0
