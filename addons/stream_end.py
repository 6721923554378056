"""Ending a stream in sluice's name, cleanly where the client can be told why.

Used by the idle watchdog (an upstream gone silent) and the meter (a budget reached mid-stream). When the
client reads an HTTP/1.1 chunked body in the clear (no content-encoding), it is sent an error record in the
provider's own format and the last chunk, so its SDK raises its normal stream error; then the upstream
connection is closed. Otherwise (HTTP/2 client, compressed stream) only the upstream is closed and the
client sees the stream cut. Either way the call's row is written with its partial usage and the reason, and
nothing more of the upstream's answer reaches the client (`Call.ended_by` stops the meter's tee).
"""

from __future__ import annotations

from mitmproxy import http

from addons import mitm_internals
from addons.calls import Call
from rules.providers import wire_format


def end_stream(flow: http.HTTPFlow, call: Call, status: int, message: str, note: str) -> None:
    """End `flow`'s stream with an error record saying `message` (in the provider's format, as `status`)."""
    call.notes.append(note)
    call.ended_by = message
    live = mitm_internals.proxy_connection(flow.client_conn)
    if live is None:
        return
    if can_end_cleanly(flow):
        # A blank line first closes any half-sent SSE record (binary frames have no such thing); the error
        # record; then the last chunk.
        wire = wire_format(call.api)
        record = (b"\n\n" if wire.stream_framing == "sse" else b"") + wire.provider.sse_error_event(
            status, message
        )
        if call.reader is not None:
            call.reader.feed(record)
        chunks = f"{len(record):x}\r\n".encode() + record + b"\r\n0\r\n\r\n"
        live.send_to_client(flow.client_conn, chunks)
    live.close_server(flow.server_conn)


def can_end_cleanly(flow: http.HTTPFlow) -> bool:
    """The client reads an HTTP/1.1 chunked body in the clear: an error record and a last chunk fit."""
    response = flow.response
    return (
        response is not None
        and flow.request.http_version == "HTTP/1.1"
        and "chunked" in response.headers.get("transfer-encoding", "").lower()
        and not response.headers.get("content-encoding")
    )
