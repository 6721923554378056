"""Give a buffered HTTP/2 or HTTP/3 request body the Content-Length an HTTP/1.1 upstream needs.

HTTP/2 and HTTP/3 frame bodies themselves, so their clients may leave Content-Length out (curl does when
told `Transfer-Encoding: chunked`, browsers often do). mitmproxy converts such a request to HTTP/1.1 for an
HTTP/1.1 upstream without adding one, and writes the body unframed: the upstream reads it as the start of
the next request (RFC 9112 §6.3: a request without Content-Length or Transfer-Encoding has no body).
With `connection_strategy=lazy` (sluice's default, see addons/core.py) the client negotiates HTTP/2 with
mitmproxy before the upstream's protocol is known, so this happens with any HTTP/1.1-only upstream.
Adding the header is harmless to an HTTP/2 upstream, which must accept a Content-Length that matches.
"""

from __future__ import annotations

from mitmproxy import http

# Methods whose request carries a body by meaning: they get `content-length: 0` even when empty, as an
# HTTP/1.1 origin may answer 411 Length Required without one (RFC 9110 §8.6).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Framing:
    # addons/chain.py: a failure here fails closed (a body the upstream reads as the next request would be
    # smuggled into a connection other clients' credentials share).
    security = True

    def request(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if flow.response is not None or not (request.is_http2 or request.is_http3) or request.stream:
            return
        if "content-length" in request.headers or "transfer-encoding" in request.headers:
            return
        body = request.raw_content or b""
        if body or request.method.upper() in BODY_METHODS:
            request.headers["content-length"] = str(len(body))
