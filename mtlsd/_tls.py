# -*- test-case-name: mtlsd.test.test_halfclose -*-
"""
Twisted's TLS transport with the two changes a TLS proxy needs, in one
place: answers are never dropped at close, and the peer's close_notify is a
half-close.
"""

from __future__ import annotations

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure


class TLSTransport(BufferingTLSTransport):
    """
    Twisted's TLS transport (which aggregates small writes until the next
    reactor turn), changed in two ways:

     1. When the peer's close_notify arrives in the same read as data the
        application answered at once, Twisted shut TLS down before that
        answer left the buffer, and dropped it.  The buffer is flushed
        before the shutdown instead.
     2. The peer's close_notify ends only its direction (TLS 1.3 treats it
        as a half-close; TLS 1.2 peers that answer at once are unaffected):
        when the application protocol provides L{IHalfCloseableProtocol}
        it gets C{readConnectionLost} and may go on writing, until it calls
        C{loseConnection}, which sends our close_notify and closes.  Twisted
        closes both directions at once.
    """

    _peerClosed = False
    rawBytesIn = 0
    """
    Bytes received from the network, before decryption.
    """

    def dataReceived(self, data: bytes) -> None:
        self.rawBytesIn += len(data)
        super().dataReceived(data)

    def _shutdownTLS(self) -> None:
        self._aggregator.flush()
        super()._shutdownTLS()

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop, with the close_notify branch changed (see 2).
        while not self._lostTLSConnection and not self._peerClosed:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                if self.disconnecting or not IHalfCloseableProtocol.providedBy(
                    self.wrappedProtocol
                ):
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
                else:
                    self._peerClosed = True
                    self.wrappedProtocol.readConnectionLost()
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()


class TLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} building L{TLSTransport}s.
    """

    protocol = TLSTransport
