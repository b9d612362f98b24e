# -*- test-case-name: mtlsd.test.test_halfclose -*-
"""
Half-close, in one place: a peer that closes its direction (TCP FIN, TLS
close_notify) while the other goes on, passed through mtlsd's wrappers to
the application, and passed on by the relay and the client to the other
side.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport, ITransport


class HalfCloseForwarding:
    """
    For a protocol wrapper (mtlsd's gates): the end of the peer's direction
    goes to a half-closeable wrapped protocol, which may go on writing; any
    other protocol is closed, as Twisted closes it.
    """

    wrappedProtocol: Any
    transport: Any

    def readConnectionLost(self) -> None:
        """
        The peer closed its direction.
        """
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our direction is closed.
        """
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.writeConnectionLost()


def closeWriting(transport: ITransport) -> None:
    """
    Close the writing direction of C{transport} and keep reading: on mtlsd's
    TLS transport C{loseConnection} sends close_notify and goes on reading
    until the peer's (once no producer is registered: Twisted's TLS waits
    for a registered producer to finish first); on TCP and UNIX sockets,
    C{loseWriteConnection} sends FIN.
    """
    transport.unregisterProducer()  # type: ignore[attr-defined]
    if ISSLTransport.providedBy(transport):
        transport.loseConnection()
    elif hasattr(transport, "loseWriteConnection"):
        transport.loseWriteConnection()
    else:
        transport.loseConnection()
