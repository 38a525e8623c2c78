"""Where media bytes come from: data URLs, and remote http(s) URLs under a fetch policy (off by
default; public addresses only, checked after DNS resolution and on every redirect; size, time and
redirect limits)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin, urlsplit

from gemmaserve.media.errors import MediaError

IMAGE_MIMES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif")
VIDEO_MIMES = ("video/mp4", "video/mpeg", "video/mov", "video/quicktime", "video/webm")


@dataclass(frozen=True)
class FetchPolicy:
    """Remote media fetching. Off unless the operator turns it on (--allow-remote-media)."""

    allow_remote: bool = False
    max_bytes: int = 20 * 2**20
    timeout_s: float = 10.0  # whole fetch, redirects included
    max_redirects: int = 3


def parse_data_url(url: str, allowed: tuple[str, ...]) -> tuple[str, bytes]:
    """`data:<mime>;base64,<payload>` -> (mime, bytes). The mime must be one of `allowed`."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:"):
        raise MediaError("not a data URL")
    meta = head[5:].split(";")
    mime = meta[0].strip().lower()
    if mime not in allowed:
        raise MediaError(f"unsupported media type {mime or '(none)'!r}; expected one of {', '.join(allowed)}")
    if "base64" not in [m.strip().lower() for m in meta[1:]]:
        raise MediaError("a media data URL must be base64-encoded (data:<type>;base64,...)")
    try:
        return mime, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("the data URL's base64 payload is malformed") from None


def public_address(host: str, resolve: Callable[[str], list[str]] | None = None) -> None:
    """Raise unless every address `host` resolves to is a public (global) one: loopback, private,
    link-local (cloud metadata 169.254.169.254), shared, reserved and multicast ranges are refused."""
    try:
        addrs = (resolve or _resolve)(host)
    except OSError:
        raise MediaError(f"the host {host!r} could not be resolved") from None
    if not addrs:
        raise MediaError(f"the host {host!r} has no address")
    for a in addrs:
        ip = ipaddress.ip_address(a.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise MediaError(f"fetching from {host!r} is refused: it resolves to a non-public address")


def _resolve(host: str) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})


def fetch(url: str, policy: FetchPolicy, resolve: Callable[[str], list[str]] | None = None) -> bytes:
    """GET a remote media URL under the policy, following at most max_redirects redirects, each
    target's addresses checked before it is contacted. MediaError on refusal or failure."""
    import httpx

    if not policy.allow_remote:
        raise MediaError("remote media URLs are disabled on this server; send a data URL")
    deadline = time.monotonic() + policy.timeout_s
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise MediaError("only http(s) URLs with a host can be fetched")
            public_address(parts.hostname, resolve)
            left = deadline - time.monotonic()
            if left <= 0:
                raise MediaError("fetching the media timed out")
            try:
                with client.stream("GET", url, timeout=left) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers.get("location", ""))
                        continue
                    if resp.status_code != 200:
                        raise MediaError(f"fetching the media failed with HTTP {resp.status_code}")
                    size = int(resp.headers.get("content-length") or 0)
                    if size > policy.max_bytes:
                        raise MediaError(f"the remote media is {size} bytes, over the {policy.max_bytes}-byte limit")
                    body = bytearray()
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) > policy.max_bytes:
                            raise MediaError(f"the remote media is over the {policy.max_bytes}-byte limit")
                        if time.monotonic() > deadline:
                            raise MediaError("fetching the media timed out")
                    return bytes(body)
            except httpx.TimeoutException:
                raise MediaError("fetching the media timed out") from None
            except httpx.HTTPError as exc:
                raise MediaError(f"fetching the media failed ({type(exc).__name__})") from None
    raise MediaError(f"more than {policy.max_redirects} redirects")


def media_bytes(url: str, allowed: tuple[str, ...], policy: FetchPolicy,
                resolve: Callable[[str], list[str]] | None = None) -> bytes:
    """The bytes behind a media part's URL: a data URL of an allowed type, or a remote fetch."""
    if url.startswith("data:"):
        return parse_data_url(url, allowed)[1]
    if url.startswith(("http://", "https://")):
        return fetch(url, policy, resolve)
    raise MediaError("the URL must be a data: URL or (when enabled) an http(s) URL")
