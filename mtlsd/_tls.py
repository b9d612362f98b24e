# -*- test-case-name: mtlsd.test.test_halfclose -*-
"""
Twisted's TLS transport with the changes a TLS proxy needs, in one place:
answers are never dropped at close, the peer's close_notify is a half-close,
and bulk data moves in fewer, larger operations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolNegotiationFactory,
)
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import (  # _representsEOF: Twisted's test for a peer's EOF
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    _representsEOF,
)
from twisted.python.failure import Failure
from zope.interface import Interface

from ._reasons import isPlainHTTP

RECORD = 2**14  # the most plaintext one TLS record carries
SEND_CHUNK = 2**17
LINGER = 1.0  # seconds a server reads and discards after a fatal alert


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
     3. Fewer, larger operations: the records decrypted from one socket
        read reach the application as one C{dataReceived} (Twisted: one per
        16 KiB record), and the records encrypted from one application write
        leave as one socket write (Twisted: one per record); an application
        that provides L{IWritesInBulk} has its writes encrypted at once.
    """

    _peerClosed = False
    _lingering: IDelayedCall | None = None
    _transportLost = False
    rawBytesIn = 0

    def __init__(self, factory: TLSFactory, wrappedProtocol: IProtocol, *args: Any) -> None:
        super().__init__(factory, wrappedProtocol, *args)
        if factory.writesInBulk:
            del self.write  # Twisted's instance attribute: the aggregator's

    def writeSequence(self, sequence: Iterable[bytes]) -> None:
        self.write(b"".join(sequence))

    def applicationProtocols(self) -> list[bytes]:
        """
        The application's ALPN protocols (for the server context's choice).
        """
        return cast(TLSFactory, self.factory).applicationProtocols()

    """
    Bytes received from the network, before decryption.
    """

    def dataReceived(self, data: bytes) -> None:
        self.rawBytesIn += len(data)
        if self._lingering is None:
            super().dataReceived(data)

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        # A server that failed the connection (its alert, if any, is in the
        # send BIO) closes as nginx and HAProxy do: it stops writing, then
        # reads and discards until the client closes, for up to LINGER
        # seconds.  Closing at once, with the client's bytes unread, makes
        # the kernel send a reset, which can overtake the alert: clients
        # that write before they read (Java, Go) then report "broken pipe"
        # instead of the alert.
        halfClose = getattr(self.transport, "loseWriteConnection", None)
        if (
            reason is None
            or cast(TLSFactory, self.factory).isClient
            or halfClose is None
            or self._transportLost
            or self._lingering is not None
            or isinstance(reason.value, Error)
            and _representsEOF(reason.value)
        ):
            super()._tlsShutdownFinished(reason)
            return
        if self._reason is None:
            self._reason = reason
        self._lostTLSConnection = True
        self._flushSendBIO()
        answer = cast(TLSFactory, self.factory).notTLSAnswer
        if answer is not None and isPlainHTTP(reason.value):
            self.transport.write(answer)  # type: ignore[union-attr]
        halfClose()
        self._lingering = self.factory._clock.callLater(
            LINGER,
            self.transport.abortConnection,  # type: ignore[union-attr]
        )

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._transportLost = True
        if reason.check(InvalidProxyHeader) and self._reason is None:
            # Refused by the PROXY wrapper beneath (mtlsd._sockettls's
            # check): the application's reason, before any TLS error.
            self._reason = reason
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)

    def _shutdownTLS(self) -> None:
        self._aggregator.flush()
        super()._shutdownTLS()

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop, with the close_notify branch changed (see 2), and
        # the records decrypted from one read given to the application at
        # once (see 3).
        records: list[bytes] = []

        def deliver() -> None:
            if records and not self._aborted:
                ProtocolWrapper.dataReceived(self, b"".join(records))
            records.clear()

        while not self._lostTLSConnection and not self._peerClosed:
            try:
                records.append(self._tlsConnection.recv(RECORD))
            except WantReadError:
                break
            except ZeroReturnError:
                deliver()
                if self.disconnecting or not IHalfCloseableProtocol.providedBy(
                    self.wrappedProtocol
                ):
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
                else:
                    self._peerClosed = True
                    self.wrappedProtocol.readConnectionLost()
            except Error:
                deliver()
                self._tlsShutdownFinished(Failure())
        deliver()
        self._flushSendBIO()

    def _write(self, data: bytes) -> None:
        # Twisted's, but OpenSSL takes all of the data before the records
        # are taken out of the send BIO, in one write (see 3).
        if self._lostTLSConnection:
            return
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                sent += self._tlsConnection.send(view[sent:])
            except WantReadError:
                self._bufferedWrite(data[sent:])
                break
            except Error:
                self._tlsShutdownFinished(Failure())
                break
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        # Everything the send BIO holds, in one write.
        chunks = []
        while True:
            try:
                chunks.append(self._tlsConnection.bio_read(SEND_CHUNK))
            except WantReadError:
                break
        if chunks:
            self.transport.write(  # type: ignore[union-attr]
                chunks[0] if len(chunks) == 1 else b"".join(chunks)
            )


class IWritesInBulk(Interface):
    """
    A marker for an application protocol factory whose protocols write in
    large pieces already (a relay writes what each read of the other side
    gave): the TLS transport writes each at once, rather than holding small
    writes for the next reactor turn (Twisted's L{BufferingTLSTransport}),
    which costs a turn of latency and CPU per write.
    """


class TLSFactory(TLSMemoryBIOFactory):
    """
    L{TLSMemoryBIOFactory} building L{TLSTransport}s.

    @ivar writesInBulk: whether the application provides L{IWritesInBulk}.
    """

    protocol = TLSTransport

    def __init__(
        self,
        contextFactory: Any,
        isClient: bool,
        wrappedFactory: Any,
        *args: Any,
        application: object = None,
        **kwargs: Any,
    ) -> None:
        """
        @param application: the application's protocol factory, which the
            wrapped factory (a gate) builds protocols from.
        """
        super().__init__(contextFactory, isClient, wrappedFactory, *args, **kwargs)
        self.isClient = isClient
        self.writesInBulk = IWritesInBulk.providedBy(application)
        self.applicationProtocols = applicationProtocols(application)
        self.notTLSAnswer = notTLSAnswer(application)


def notTLSAnswer(application: object) -> bytes | None:
    """
    @return: what an application's protocol factory has a client answered
        when it sends a plain HTTP request instead of a TLS handshake (its
        C{notTLSAnswer}: an HTTP error saying this port wants HTTPS), if
        anything.
    """
    answer = getattr(application, "notTLSAnswer", None)
    return answer if isinstance(answer, bytes) else None


def applicationProtocols(application: object) -> Callable[[], list[bytes]]:
    """
    @return: a function giving the ALPN protocols of an application's
        protocol factory (none if it negotiates none), for the server
        context's choice among those a client offers.
    """
    negotiating = IProtocolNegotiationFactory(application, None)
    if negotiating is None:
        return list
    return lambda: list(negotiating.acceptableProtocols())
