"""What `--ops` exports to: a loopback HTTP server that accepts POSTs (an OTLP/HTTP collector, a webhook),
and a Prometheus scrape.

`PostSink` answers every POST 200, as a healthy collector does (or the statuses queued in `statuses`
first), counts what it got and, with `keep=True`, keeps each body: the end-to-end tests decode spans and
read alerts from it too. Runs on a thread of the process that starts it: in the benchmark it costs the
bench, not the proxies being measured.
"""

from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PostSink:
    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.posts: dict[str, int] = {}
        self.bytes = 0
        self.bodies: list[tuple[str, bytes]] = []
        self.statuses: list[int] = []  # answered first, in order; then 200
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with sink.lock:
                    sink.posts[self.path] = sink.posts.get(self.path, 0) + 1
                    sink.bytes += len(body)
                    if sink.keep:
                        sink.bodies.append((self.path, body))
                    status = sink.statuses.pop(0) if sink.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="post-sink", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def posted(self, path: str) -> list[bytes]:
        """The bodies POSTed to `path`, in order (with `keep=True`)."""
        with self.lock:
            return [body for where, body in self.bodies if where == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape_bytes(address: str) -> int:
    """One Prometheus scrape of `address` (host:port): the size of `/metrics`, to show it was served."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return len(response.read())
