"""What `--ops` exports to: a loopback OTLP/HTTP collector that accepts and counts, and a Prometheus scrape.

The collector answers 200 to every POST, as a healthy collector does, and counts what it got, so the
report can say the spans really left. Runs on a thread of the bench process: it costs the bench, not the
proxies being measured.
"""

from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OtlpSink:
    def __init__(self) -> None:
        self.posts: dict[str, int] = {}
        self.bytes = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with sink.lock:
                    sink.posts[self.path] = sink.posts.get(self.path, 0) + 1
                    sink.bytes += len(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape_bytes(address: str) -> int:
    """One Prometheus scrape of `address` (host:port): the size of `/metrics`, to show it was served."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return len(response.read())
