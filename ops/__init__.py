"""Operations: Prometheus metrics, OpenTelemetry spans and webhook alerts, in a process of their own.

The proxy (addons/ops_feed.py) hands each finished call to this process in batches over a pipe; everything
here runs there, at a lower CPU priority than the proxy, so building a span or a counter never holds the
proxy's interpreter lock. Nothing in this package imports mitmproxy or `addons/`: the process starts
without either.
"""
