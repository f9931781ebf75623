"""uvicorn's HTTP/1.1 connection with a bound on the time a request head may take (slowloris).

uvicorn times out idle keep-alive connections only: a client that trickles header bytes and never ends the head
holds its connection until uvicorn's limit_concurrency. `HeaderTimeout` closes a connection whose request head is
not complete `header_timeout` seconds after the connection opened or the request's first bytes came; the body has
the app's own bound (--body-timeout, 408). It is h11's protocol (not httptools'), so h11_max_incomplete_event_size
bounds the head's bytes too. Each such close is one warning on the server's logger (client address, seconds
waited) and one count of the app's onnxplain_header_timeouts_total.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("onnxplain.serve")


class HeaderTimeout(H11Protocol):
    """H11Protocol that closes the connection when a request head is not complete within `header_timeout` s."""

    header_timeout: float = 10.0
    closed: Any = None  # counts each close (a prometheus Counter: .inc()); None counts nothing
    _header_timer: asyncio.TimerHandle | None = None
    _header_start: float = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # a head begins (or goes on): its clock runs from its first bytes
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or the connection failed)
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_start = self.loop.time()
            self._header_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
            self._report()

    def _report(self) -> None:
        """One warning line and one count for a connection closed at the header timeout."""
        host, port = self.client or ("an unknown client", None)
        log.warning("Closed the connection from %s: its request head was not complete after %.1f s "
                    "(--header-timeout %g s).", host if port is None else f"{host}:{port}",
                    self.loop.time() - self._header_start, self.header_timeout)
        if self.closed is not None:
            self.closed.inc()


def header_timeout_protocol(seconds: float, closed: Any = None) -> type[HeaderTimeout]:
    """The protocol class to give uvicorn (`http=`), closing heads slower than `seconds`, each close counted in
    `closed` (a prometheus Counter, or None)."""
    return type("HeaderTimeout", (HeaderTimeout,), {"header_timeout": seconds, "closed": closed})
