"""media/source.py: data URLs, and the remote fetch policy against a real local HTTP server (off by
default; non-public addresses refused after resolution and on every redirect; size/redirect limits)."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gemmaserve.media.errors import MediaError
from gemmaserve.media.source import IMAGE_MIMES, FetchPolicy, fetch, media_bytes, parse_data_url, public_address

ON = FetchPolicy(allow_remote=True, max_bytes=1000, timeout_s=5.0, max_redirects=2)


def test_data_urls():
    assert parse_data_url("data:image/png;base64," + base64.b64encode(b"abc").decode(), IMAGE_MIMES) == ("image/png", b"abc")
    with pytest.raises(MediaError, match="unsupported media type"):
        parse_data_url("data:text/plain;base64,YQ==", IMAGE_MIMES)
    with pytest.raises(MediaError, match="base64-encoded"):
        parse_data_url("data:image/png,rawtext", IMAGE_MIMES)
    with pytest.raises(MediaError, match="malformed"):
        parse_data_url("data:image/png;base64,%%%", IMAGE_MIMES)
    with pytest.raises(MediaError, match="data: URL"):
        media_bytes("ftp://x/y.png", IMAGE_MIMES, ON)


@pytest.mark.parametrize("addr", ["127.0.0.1", "10.1.2.3", "192.168.0.5", "172.16.0.1", "169.254.169.254",
                                  "100.64.0.1", "::1", "fd00::1", "fe80::1", "0.0.0.0", "224.0.0.1",
                                  "::ffff:127.0.0.1"])
def test_non_public_addresses_refused(addr):
    with pytest.raises(MediaError, match="non-public"):
        public_address("media.example", lambda _h: [addr])


def test_public_address_allowed_and_any_bad_address_refuses():
    public_address("media.example", lambda _h: ["93.184.216.34", "2606:2800:220:1::1"])
    with pytest.raises(MediaError, match="non-public"):
        public_address("media.example", lambda _h: ["93.184.216.34", "10.0.0.1"])


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/ok":
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")
        elif self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect"):].replace("/to-", "http://", 1))
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no length: the limit is enforced while reading
            self.wfile.write(b"x" * 5000)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def public(_host):  # pretend the local test server is a public host (only for these tests)
    return ["93.184.216.34"]


def test_fetch_policy(server):
    with pytest.raises(MediaError, match="disabled"):
        fetch(f"http://{server}/ok", FetchPolicy())
    with pytest.raises(MediaError, match="non-public"):
        fetch(f"http://{server}/ok", ON)  # the real resolution: loopback
    assert fetch(f"http://{server}/ok", ON, public) == b"hello"
    with pytest.raises(MediaError, match="over the 1000-byte limit"):
        fetch(f"http://{server}/big", ON, public)
    with pytest.raises(MediaError, match="redirects"):
        fetch(f"http://{server}/loop", ON, public)
    with pytest.raises(MediaError, match="HTTP 404"):
        fetch(f"http://{server}/missing", ON, public)


def test_redirect_target_is_checked(server):
    def resolver(host):  # the first hop looks public, the redirect names a private host
        return ["93.184.216.34"] if host == "127.0.0.1" else ["10.0.0.7"]

    port = server.split(":")[1]
    with pytest.raises(MediaError, match="non-public"):
        fetch(f"http://{server}/redirect/to-internal.example:{port}/ok", ON, resolver)
