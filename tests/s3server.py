"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, on a free port.

It speaks the S3 HTTP API (multipart uploads, If-None-Match conditional writes) so s3fs and boto3
talk to it exactly as to AWS. Runs in a thread of the test process; nothing leaves the machine.

    with moto_s3() as endpoint_url: ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

# Fake credentials: botocore refuses to sign without some, and real ones must never be used.
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
# Variables that could point the tests at a real account or endpoint.
UNSET_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
             "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """Start moto's S3 server; yield its endpoint URL; stop it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in test output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that injects the faults S3 clients meet:
    every `throttle_every`-th request is answered 503 SlowDown, every `reset_every`-th one has its
    connection closed without an answer, and when the upstream is unreachable (the server is
    stopped) the client's connection is closed too, as a load balancer would.

    Requests are forwarded one by one with http.client (bodies are small in tests)."""

    def __init__(self, upstream: str, throttle_every: int = 0, reset_every: int = 0):
        import http.server
        import threading
        import urllib.parse

        up = urllib.parse.urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.throttle_every, self.reset_every = throttle_every, reset_every
        self.requests = self.throttled = self.resets = self.refused = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h) -> None:
        import http.client

        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        with self._lock:
            self.requests += 1
            n = self.requests
        if self.reset_every and n % self.reset_every == 0:
            self.resets += 1
            h.close_connection = True
            return  # no answer: the client sees the connection drop
        if self.throttle_every and n % self.throttle_every == 0:
            self.throttled += 1
            msg = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                   b"<Message>Please reduce your request rate.</Message></Error>")
            h.send_response(503, "Slow Down")
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(msg)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(msg)
            return
        try:
            conn = http.client.HTTPConnection(*self.upstream, timeout=30)
            conn.request(h.command, h.path, body=body or None,
                         headers={k: v for k, v in h.headers.items() if k.lower() != "connection"})
            resp = conn.getresponse()
            data = resp.read()
        except OSError:  # the server is down
            with self._lock:
                self.refused += 1
            h.close_connection = True
            return
        h.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                h.send_header(k, v)
        # HEAD: the object's length, as the server said; otherwise the length of the (de-chunked) body
        h.send_header("Content-Length", resp.getheader("Content-Length", "0") if h.command == "HEAD"
                      else str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        conn.close()


@contextlib.contextmanager
def restartable_moto_s3() -> Iterator[Any]:
    """A moto S3 server that a test can stop and start again on the same port; the stored objects
    survive (moto keeps them in this process). Yields the server handle with .url, .stop(), .start()."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    class Handle:
        def __init__(self):
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            self.host, self.port = self.server.get_host_and_port()

        @property
        def url(self) -> str:
            return f"http://{self.host}:{self.port}"

        def stop(self) -> None:
            self.server.stop()

        def start(self) -> None:
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()

    h = Handle()
    try:
        yield h
    finally:
        h.stop()
