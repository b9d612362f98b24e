# -*- test-case-name: mtlsd.test.test_cli -*-
"""
C{mtlsd connect}: standard input to a mutual-TLS server, its answer to
standard output, like C{openssl s_client -quiet} but verifying.
"""

from __future__ import annotations

from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from zope.interface import implementer

from ._halfclose import closeWriting
from ._identity import peerIdentity


class OutputClosed(Exception):
    """
    Standard output was closed before all of the server's bytes were
    written to it.
    """


@implementer(IHalfCloseableProtocol)
class _StandardIOSide(Protocol):
    """
    Standard input and output: input goes to the TLS side; at the end of
    input the TLS side sends close_notify and keeps reading.
    """

    def __init__(self, relay: _TLSSide) -> None:
        self.relay = relay

    def dataReceived(self, data: bytes) -> None:
        self.relay.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.relay.endOfInput()

    def writeConnectionLost(self) -> None:
        self.relay.outputClosed()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        # After the TLS side's loseConnection: the output is flushed (done),
        # or its reader went away first (lost).
        if not reason.check(ConnectionDone):
            self.relay.outputClosed()
        self.relay.standardIOClosed()


@implementer(IHandshakeListener)
class _TLSSide(Protocol):
    """
    The mutual-TLS connection: the server's bytes go to standard output.
    """

    def __init__(self, verbose: bool, stderr: IO[str], done: Deferred[None]) -> None:
        self.verbose = verbose
        self.stderr = stderr
        self.done = done
        self.stdio: StandardIO | None = None
        self.handshakeDone = False
        self.inputEnded = False
        self.outputGone = False
        self.closed = False
        self.error: BaseException | None = None

    def connectionMade(self) -> None:
        self.connection = self.transport.getHandle()  # type: ignore[union-attr]
        self.stdio = StandardIO(_StandardIOSide(self))
        self.transport.registerProducer(self.stdio, True)  # type: ignore[union-attr]
        self.stdio.registerProducer(self.transport, True)

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True
        if self.verbose:
            identity = peerIdentity(self.transport)
            names = ", ".join([*identity.dnsNames, *identity.ipAddresses])
            self.stderr.write(
                f"mtlsd connect: connected with"
                f" {self.connection.get_protocol_version_name()}; server"
                f" {identity.subject} (names: {names or 'none'}), issuer"
                f" {identity.issuer}, sha256 {identity.fingerprint}\n"
            )
            self.stderr.flush()
        if self.inputEnded:
            self._closeWrite()

    def endOfInput(self) -> None:
        """
        Standard input is exhausted: send close_notify once the handshake
        is done (closing earlier would abort it), then keep reading.
        """
        self.inputEnded = True
        if self.handshakeDone:
            self._closeWrite()

    def _closeWrite(self) -> None:
        assert self.transport is not None
        closeWriting(self.transport)

    def outputClosed(self) -> None:
        """
        Standard output's reader went away (C{| head}): what the server
        sends can go nowhere, so end the connection now, as C{cat} ends.
        """
        self.outputGone = True
        if not self.closed:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        assert self.stdio is not None
        self.stdio.write(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed = True
        # mtlsd's client endpoint already turned a failure into one sentence.
        self.error = None if reason.check(ConnectionDone) else reason.value
        assert self.stdio is not None
        # Standard output may still be draining; with this transport still
        # registered as its producer it would resume it instead of closing.
        self.stdio.unregisterProducer()
        self.stdio.loseConnection()
        if self.outputGone:
            # Twisted's StandardIO, its output gone, calls no connectionLost.
            self.standardIOClosed()

    def standardIOClosed(self) -> None:
        if self.done.called:
            return
        if self.outputGone:
            self.done.errback(OutputClosed())
        elif self.error is None:
            self.done.callback(None)
        else:
            self.done.errback(self.error)


def relayFactory(verbose: bool, stderr: IO[str], done: Deferred[None]) -> Factory:
    """
    @return: a factory for the one connection of C{mtlsd connect}; C{done}
        fires when the server has closed and the output is flushed, or
        fails with the reason the connection failed, or L{OutputClosed}.
    """
    return Factory.forProtocol(lambda: _TLSSide(verbose, stderr, done))
