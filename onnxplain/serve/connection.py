"""uvicorn's HTTP/1.1 connection with a bound on the time a request head may take (slowloris).

uvicorn times out idle keep-alive connections only: a client that trickles header bytes and never ends the head
holds its connection until uvicorn's limit_concurrency. `HeaderTimeout` closes a connection whose request head is
not complete `header_timeout` seconds after the connection opened or the request's first bytes came; the body has
the app's own bound (--body-timeout, 408). It is h11's protocol (not httptools'), so h11_max_incomplete_event_size
bounds the head's bytes too.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeout(H11Protocol):
    """H11Protocol that closes the connection when a request head is not complete within `header_timeout` s."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

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
            self._header_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeout]:
    """The protocol class to give uvicorn (`http=`), closing heads slower than `seconds`."""
    return type("HeaderTimeout", (HeaderTimeout,), {"header_timeout": seconds})
