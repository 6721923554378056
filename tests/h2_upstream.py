"""A minimal HTTP/2-only upstream (TLS, ALPN `h2`), as the real provider APIs are: answers every request with
one non-streamed Anthropic message and records what it received. Built on the `h2` state machine that
mitmproxy itself uses; one thread per connection. Only for tests that must see mitmproxy's HTTP/2 client
side; everything else uses tests/fake_provider.py.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

ANSWER = {
    "id": "msg_h2",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "over h2"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 11, "output_tokens": 3},
}


@dataclass
class Received:
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name.lower()), None)


@dataclass
class H2Upstream:
    certfile: Path
    keyfile: Path
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(self.certfile), str(self.keyfile))
        self._context.set_alpn_protocols(["h2"])
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> H2Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stopping.set()
        self._listener.close()

    def hosts_env(self, hosts: tuple[str, ...] = ("api.anthropic.com",)) -> str:
        return ",".join(f"{name}=127.0.0.1:{self.port}" for name in hosts)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        streams: dict[int, Received] = {}
        with conn:
            while not self._stopping.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for event in h2conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = Received(
                            [(_text(k).lower(), _text(v)) for k, v in event.headers]
                        )
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id].body += event.data
                        h2conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.received.append(streams.pop(event.stream_id))
                        body = json.dumps(ANSWER).encode()
                        h2conn.send_headers(
                            event.stream_id,
                            [
                                (":status", "200"),
                                ("content-type", "application/json"),
                                ("content-length", str(len(body))),
                                ("request-id", "req_h2"),
                            ],
                        )
                        h2conn.send_data(event.stream_id, body, end_stream=True)
                conn.sendall(h2conn.data_to_send())


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
