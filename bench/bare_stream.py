"""The benchmark's baseline addon: what any proxy in front of an LLM API must do, and nothing else.

Without it mitmproxy buffers a `text/event-stream` response (or Bedrock's AWS event-stream) until the
upstream closes it, which no client of a streaming API would accept; so the fair baseline for sluice is
mitmdump plus exactly this.
"""

from mitmproxy import http


class BareStream:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.headers.get("content-type", "").startswith(
            ("text/event-stream", "application/vnd.amazon.eventstream")
        ):
            flow.response.stream = True


addons = [BareStream()]
