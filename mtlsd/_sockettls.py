# -*- test-case-name: mtlsd.test.test_sockettls -*-
"""
mtlsd's own TLS transport, for the sockets it listens on itself: OpenSSL
reads and writes the socket (a socket BIO), inside Twisted's reactor.

Twisted's TLS layer (L{twisted.protocols.tls}) wraps any transport: OpenSSL
works on memory buffers, and every record crosses the buffers, the wrapper
and the socket transport beneath, one Python call after another; writes
wait for the next reactor turn.  On a socket mtlsd owns, a transport that
is the socket and the TLS connection at once does the same work with a
few calls: a read takes the records the socket holds, a write goes out at
once when the socket takes it, and the rest of Twisted's socket transport
(its write buffer, producer and consumer, closing and aborting) is reused
as it is.  To applications it is the same: an L{ISSLTransport} whose
C{getHandle} is the OpenSSL connection, giving the handshake to an
L{IHandshakeListener}, with the half-close and the lingering close of
L{mtlsd._tls.TLSTransport}.

L{socketListen} listens with it on the endpoints it knows (TCP, UNIX,
adopted and systemd sockets, and those behind C{haproxy:}, whose PROXY
header is read before the TLS starts); any other endpoint keeps Twisted's
TLS layer.  C{MTLSD_TLS_TRANSPORT=memory} keeps it everywhere (the test
suite runs on both).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from OpenSSL.SSL import (
    Connection,
    Error,
    SysCallError,
    WantReadError,
    WantWriteError,
    ZeroReturnError,
)
from twisted.internet import abstract, main, posixbase, tcp, unix
from twisted.internet.defer import Deferred, execute, fail
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    _WrapperServerEndpoint,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    INegotiated,
    IProtocolFactory,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.tls import _representsEOF
from twisted.python.failure import Failure
from zope.interface import implementer

from ._reasons import isPlainHTTP
from ._tls import LINGER, RECORD

TRANSPORT_VARIABLE = "MTLSD_TLS_TRANSPORT"
_RECORDS_PER_READ = 16  # then the reactor serves the other connections
_PEEK = 4096


def ownsSockets() -> bool:
    """
    Whether mtlsd listens with its own TLS transport where it can (unless
    C{MTLSD_TLS_TRANSPORT=memory}).
    """
    return os.environ.get(TRANSPORT_VARIABLE, "socket") != "memory"


class TLSListener:
    """
    What a listening port's connections share: how to make each one's
    OpenSSL connection, and whether a PROXY header comes first.
    """

    def __init__(
        self,
        connectionFor: Callable[[socket.socket, object], Connection],
        applicationProtocols: Callable[[], list[bytes]],
        proxyHeader: bool = False,
        notTLSAnswer: bytes | None = None,
    ) -> None:
        """
        @param connectionFor: makes the OpenSSL connection of an accepted
            socket (server side), given the socket and its transport.
        @param applicationProtocols: the application's ALPN protocols.
        @param proxyHeader: whether each connection starts with a PROXY
            header (a C{haproxy:} listener).
        @param notTLSAnswer: what a client that sends a plain HTTP request
            is answered (see L{mtlsd._tls.notTLSAnswer}).
        """
        self.connectionFor = connectionFor
        self.applicationProtocols = applicationProtocols
        self.proxyHeader = proxyHeader
        self.notTLSAnswer = notTLSAnswer


def _headerLength(header: bytes) -> int | None:
    """
    The length of the PROXY header (version 1 or 2) that C{header} begins,
    or L{None} while that is not known yet.

    @raise InvalidProxyHeader: if C{header} cannot begin one.
    """
    if header[:1] == V2Parser.PREFIX[:1]:
        if not V2Parser.PREFIX.startswith(header[:12]):
            raise InvalidProxyHeader()
        if len(header) < 16:
            return None
        if header[12] & 0xF0 != 0x20:  # version 2
            raise InvalidProxyHeader()
        return 16 + int(struct.unpack("!H", header[14:16])[0])
    if not (header.startswith(V1Parser.PROXYSTR) or V1Parser.PROXYSTR.startswith(header)):
        raise InvalidProxyHeader()
    end = header.find(V1Parser.NEWLINE)
    if end >= 0:
        return end + 2
    if len(header) > 107:
        raise InvalidProxyHeader()
    return None


def sendNow(descriptor: abstract.FileDescriptor, data: bytes) -> None:
    """
    Write C{data} to a socket transport: with nothing queued, send it now, as
    far as the socket takes it (C{writeSomeData}: for mtlsd's TLS transport,
    OpenSSL on the socket), rather than at the next reactor turn, where
    Twisted's socket transports write; the rest is queued as Twisted queues
    it.
    """
    if (
        descriptor.connected
        and not (descriptor.disconnecting or descriptor._writeDisconnecting)
        and not (descriptor.dataBuffer or descriptor._tempDataLen)
    ):
        sent = descriptor.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
        # else: the error comes again when the queue is written, and closes
    abstract.FileDescriptor.write(descriptor, data)


def _parseHeader(header: bytes) -> ProxyInfo:
    if header.startswith(V2Parser.PREFIX):
        return V2Parser.parse(header)
    return V1Parser.parse(header[:-2])


class _SocketTLS:
    """
    The TLS part of a server connection on a socket (mixed into Twisted's
    TCP and UNIX server transports).  Its states: reading the PROXY header
    (C{haproxy:}), handshaking, established, the peer's direction closed
    (C{_peerClosed}), ours closed (C{_closing}: close_notify sent, reading
    on until the peer's), and lingering after a fatal alert.
    """

    socket: socket.socket
    protocol: Any
    reactor: Any
    connected: int
    disconnecting: int
    dataBuffer: bytes
    _tempDataLen: int
    _tempDataBuffer: list[bytes]
    _writeDisconnected: bool

    _handshakeDone = False
    _peerClosed = False
    _closing = False
    _readWantsWrite = False
    _paused = False
    _lingering: IDelayedCall | None = None
    _failure: Failure | None = None
    _proxyInfo: ProxyInfo | None = None
    _header = b""
    rawBytesIn = 0
    """
    Whether any byte came from the client (1) before the handshake, so that
    a connection closed without one (a load balancer's check) is quiet.
    """

    def _startTLS(self, listener: TLSListener) -> None:
        self._listener = listener
        self._tls = listener.connectionFor(self.socket, self)
        self._tls.set_accept_state()
        self._proxyPending = listener.proxyHeader

    # What applications see

    def getHandle(self) -> Any:
        """
        The OpenSSL connection (as Twisted's TLS transport gives it).
        """
        return self._tls

    def getPeerCertificate(self) -> Any:
        return self._tls.get_peer_certificate()

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """
        The protocol chosen by ALPN, if any.
        """
        if not self._handshakeDone:
            return None
        return self._tls.get_alpn_proto_negotiated() or None

    def applicationProtocols(self) -> list[bytes]:
        """
        The application's ALPN protocols (for the server context's choice).
        """
        return self._listener.applicationProtocols()

    def getPeer(self) -> Any:
        if self._proxyInfo is not None and self._proxyInfo.source:
            return self._proxyInfo.source
        return super().getPeer()  # type: ignore[misc]

    def getHost(self) -> Any:
        if self._proxyInfo is not None and self._proxyInfo.destination:
            return self._proxyInfo.destination
        return super().getHost()  # type: ignore[misc]

    # Reading

    def doRead(self) -> Any:
        if self._lingering is not None:
            return self._discard()
        if not self._handshakeDone:
            if self._proxyPending:
                return self._readProxyHeader()
            return self._handshake()
        return self._readRecords()

    def _readProxyHeader(self) -> object:
        """
        Read the PROXY header, and not a byte past it: OpenSSL reads the
        socket from the byte after.
        """
        try:
            peeked = self.socket.recv(_PEEK, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not peeked:
            return main.CONNECTION_DONE
        try:
            length = _headerLength(self._header + peeked)
            # Until the length is known, every byte is the header's.
            wanted = len(peeked) if length is None else length - len(self._header)
            self._header += self.socket.recv(min(wanted, len(peeked)))
            if length is None or len(self._header) < length:
                return None  # the rest is still on its way
            self._proxyInfo = _parseHeader(self._header)
        except InvalidProxyHeader:
            # Closed, as Twisted's PROXY wrapper closes, and logged.
            self._failure = Failure(InvalidProxyHeader())
            self.rawBytesIn = 1
            return main.CONNECTION_DONE
        except OSError:
            return main.CONNECTION_LOST
        self._proxyPending = False
        del self._header
        return self._handshake()

    def _handshake(self) -> object:
        if not self.rawBytesIn:
            try:
                if not self.socket.recv(1, socket.MSG_PEEK):
                    return main.CONNECTION_DONE
            except BlockingIOError:
                return None
            except OSError:
                return main.CONNECTION_LOST
            self.rawBytesIn = 1
        try:
            self._tls.do_handshake()
        except WantReadError:
            self.stopWriting()  # type: ignore[attr-defined]
            return None
        except WantWriteError:
            self.startWriting()  # type: ignore[attr-defined]
            return None
        except SysCallError:
            return main.CONNECTION_LOST  # a reset: "closed before handshake"
        except Error as e:
            if _representsEOF(e):
                return main.CONNECTION_LOST
            return self._failed(e)
        self._handshakeDone = True
        if self._tempDataLen or self.disconnecting:
            self.startWriting()  # type: ignore[attr-defined]
        else:
            self.stopWriting()  # type: ignore[attr-defined]
        listener = IHandshakeListener(self.protocol, None)
        if listener is not None:
            listener.handshakeCompleted()
        return None

    def _readRecords(self) -> object:
        # The records the socket holds (up to a bound), given to the
        # protocol as one piece.
        records: list[bytes] = []
        outcome: object = None
        peerClosed = False
        try:
            for _ in range(_RECORDS_PER_READ):
                records.append(self._tls.recv(RECORD))
        except WantReadError:
            pass
        except WantWriteError:
            # OpenSSL must write first (an answer to a key update): no reading
            # until the socket takes it (doWrite reads again).
            self._readWantsWrite = True
            self.stopReading()  # type: ignore[attr-defined]
            self.startWriting()  # type: ignore[attr-defined]
        except ZeroReturnError:
            peerClosed = True
        except SysCallError:
            outcome = main.CONNECTION_DONE if self._closing else main.CONNECTION_LOST
        except Error as e:
            if _representsEOF(e):
                outcome = main.CONNECTION_DONE if self._closing else main.CONNECTION_LOST
            else:
                outcome = e
        if records and self.connected and not getattr(self, "_aborting", False):
            self.protocol.dataReceived(records[0] if len(records) == 1 else b"".join(records))
        if peerClosed:
            return self._peerClosedTLS()
        if isinstance(outcome, Error):
            return self._failed(outcome)
        return outcome

    def _peerClosedTLS(self) -> object:
        """
        The peer's close_notify: the end of its direction.  The protocol (a
        half-closeable gate) may go on writing, until it closes.
        """
        if self._closing:
            return main.CONNECTION_DONE  # both directions are closed
        self._peerClosed = True
        self.stopReading()  # type: ignore[attr-defined]
        if self.disconnecting:
            return None  # closing already, once the buffer is written
        self.protocol.readConnectionLost()
        return None

    def readConnectionLost(self, reason: Failure) -> None:
        # The socket's EOF: TLS ends a direction with close_notify, not FIN.
        self.connectionLost(reason)

    def _discard(self) -> object:
        try:
            if self.socket.recv(65536):
                return None
        except BlockingIOError:
            return None
        except OSError:
            pass
        return main.CONNECTION_DONE

    def _failed(self, reason: Error) -> object:
        """
        A fatal TLS error (its alert, if any, is sent).  As nginx and
        HAProxy, stop writing, then read and discard until the client
        closes, for up to L{LINGER} seconds (see L{mtlsd._tls.TLSTransport}).
        """
        self._failure = Failure(reason)
        self.stopWriting()  # type: ignore[attr-defined]
        try:
            answer = self._listener.notTLSAnswer
            if answer is not None and isPlainHTTP(reason):
                self.socket.send(answer)  # a few hundred bytes: the buffer takes them
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            return main.CONNECTION_LOST
        self._lingering = self.reactor.callLater(
            LINGER,
            self.abortConnection,  # type: ignore[attr-defined]
        )
        return None

    # Writing

    def write(self, data: bytes) -> None:
        if self._closing:
            return  # close_notify is sent: TLS takes no more data
        if self._handshakeDone:
            sendNow(self, data)  # type: ignore[arg-type]
        else:
            abstract.FileDescriptor.write(self, data)  # type: ignore[arg-type]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def writeSomeData(self, data: bytes) -> Any:
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                sent += self._tls.send(view[sent:])
        except (WantWriteError, WantReadError):
            pass
        except SysCallError:
            return main.CONNECTION_LOST
        except Error as e:
            self._failure = Failure(e)
            return main.CONNECTION_LOST
        return sent

    def doWrite(self) -> Any:
        if self._lingering is not None:
            return None
        if self._readWantsWrite:
            self._readWantsWrite = False
            if not (self.dataBuffer or self._tempDataLen):
                self.stopWriting()  # type: ignore[attr-defined]
            if not self._paused:
                self.startReading()  # type: ignore[attr-defined]
            return self._readRecords()
        if not self._handshakeDone:
            if self.disconnecting:
                return main.CONNECTION_DONE
            return self._handshake()
        return super().doWrite()  # type: ignore[misc]

    # Closing

    def loseConnection(self) -> None:
        """
        Send what is buffered, then close_notify, and read on until the
        peer's (or its EOF): TLS's close, as Twisted's TLS transport does it.
        """
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        if self._lingering is not None:
            return
        self.startWriting()  # type: ignore[attr-defined]

    loseWriteConnection = loseConnection  # TLS's half-close is close_notify

    def _postLoseConnection(self) -> object:
        # Everything buffered is written: close_notify.
        if not self._handshakeDone:
            return main.CONNECTION_DONE
        try:
            self._tls.shutdown()
        except Error:
            return main.CONNECTION_DONE
        if self._peerClosed:
            return main.CONNECTION_DONE
        self._closing = True
        self.startReading()  # type: ignore[attr-defined]
        return None

    def pauseProducing(self) -> None:
        self._paused = True
        self.stopReading()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self._paused = False
        if self.connected and not self._peerClosed and self._lingering is None:
            self.startReading()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure) -> None:
        if self._lingering is not None:
            if self._lingering.active():
                self._lingering.cancel()
            self._lingering = None
        if self._failure is not None:
            reason = self._failure  # the TLS error, for the logs
        super().connectionLost(reason)  # type: ignore[misc]


@implementer(ISSLTransport, INegotiated)
class _TCPServer(_SocketTLS, tcp.Server):
    def __init__(self, sock: socket.socket, protocol: Any, *args: Any) -> None:
        super().__init__(sock, protocol, *args)
        self._startTLS(args[1].tlsListener)


@implementer(ISSLTransport, INegotiated)
class _UNIXServer(_SocketTLS, unix.Server):
    def __init__(self, sock: socket.socket, protocol: Any, *args: Any) -> None:
        super().__init__(sock, protocol, *args)
        self._startTLS(args[1].tlsListener)


class _TLSPort:
    tlsListener: TLSListener

    def _getLogPrefix(self, factory: object) -> str:
        # As Twisted's TLS and PROXY wrappers name a listener (mtlsd (TLS)
        # starting on 8082; mtlsd (TLS) (PROXY) starting on ...).
        prefix = super()._getLogPrefix(factory)  # type: ignore[misc]
        return f"{prefix} (TLS) (PROXY)" if self.tlsListener.proxyHeader else f"{prefix} (TLS)"


class _TCPPort(_TLSPort, tcp.Port):
    transport = _TCPServer  # type: ignore[assignment]


class _UNIXPort(_TLSPort, unix.Port):
    transport = _UNIXServer


def _port(endpoint: object, factory: IProtocolFactory, listener: TLSListener) -> Any | None:
    """
    A port (not listening yet) with mtlsd's transport for one of the
    endpoints it knows, or L{None}.
    """
    port: Any
    if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        reactor = endpoint._reactor
        if not isinstance(reactor, posixbase.PosixReactorBase):
            return None
        port = _TCPPort(
            endpoint._port, factory, endpoint._backlog, endpoint._interface, reactor=reactor
        )
    elif isinstance(endpoint, UNIXServerEndpoint):
        reactor = endpoint._reactor
        if not isinstance(reactor, posixbase.PosixReactorBase):
            return None
        port = _UNIXPort(
            endpoint._address,
            factory,
            endpoint._backlog,
            endpoint._mode,
            reactor=reactor,
            wantPID=endpoint._wantPID,
        )
    elif isinstance(endpoint, AdoptedStreamServerEndpoint):
        reactor = endpoint.reactor
        if not isinstance(reactor, posixbase.PosixReactorBase) or endpoint._used:
            return None
        endpoint._used = True
        endpoint._setNonBlocking(endpoint.fileno)
        if endpoint.addressFamily == socket.AF_UNIX:
            port = _UNIXPort._fromListeningDescriptor(reactor, endpoint.fileno, factory)
        else:
            port = _TCPPort._fromListeningDescriptor(
                reactor, endpoint.fileno, endpoint.addressFamily, factory
            )
        os.close(endpoint.fileno)  # the port has its own copy, as Twisted's
    else:
        return None
    port.tlsListener = listener
    return port


class _ProxyHeaderCheck(HAProxyProtocolWrapper):
    """
    Twisted's PROXY wrapper, for an endpoint on Twisted's TLS layer: a
    connection it closes for an invalid header is lost with
    L{InvalidProxyHeader}, so that the gate logs why (as on mtlsd's own
    transport), not a quiet close.
    """

    _invalid = False

    def loseConnection(self) -> None:
        # Twisted's wrapper closes this way only for a header it refused.
        if self._proxyInfo is None:
            self._invalid = True
        super().loseConnection()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._invalid:
            reason = Failure(InvalidProxyHeader())
        super().connectionLost(reason)


class _ProxyHeaderCheckFactory(HAProxyWrappingFactory):
    protocol = _ProxyHeaderCheck  # type: ignore[assignment]


def memoryEndpoint(endpoint: IStreamServerEndpoint) -> IStreamServerEndpoint:
    """
    The endpoint to listen on with Twisted's TLS layer: C{endpoint}, or for
    a C{haproxy:} one, the same with a PROXY wrapper that says why it
    refused a connection.
    """
    if (
        isinstance(endpoint, _WrapperServerEndpoint)
        and endpoint._wrapperFactory is HAProxyWrappingFactory
    ):
        return _WrapperServerEndpoint(endpoint._wrappedEndpoint, _ProxyHeaderCheckFactory)
    return endpoint


def socketListen(
    endpoint: object,
    factory: IProtocolFactory,
    listener: TLSListener,
) -> Deferred[IListeningPort] | None:
    """
    Listen on C{endpoint} with mtlsd's own TLS transport, C{factory}
    building each connection's protocol (a gate), if the endpoint is one
    mtlsd knows: TCP, UNIX, adopted (and systemd), or one of them behind
    C{haproxy:}.

    @return: a Deferred firing with the listening port, or L{None} for an
        endpoint mtlsd does not know (or C{MTLSD_TLS_TRANSPORT=memory}): the
        caller uses Twisted's TLS layer on it.
    """
    if not ownsSockets():
        return None
    if (
        isinstance(endpoint, _WrapperServerEndpoint)
        and endpoint._wrapperFactory is HAProxyWrappingFactory
    ):
        endpoint = endpoint._wrappedEndpoint
        listener = TLSListener(
            listener.connectionFor, listener.applicationProtocols, True, listener.notTLSAnswer
        )
    try:
        port = _port(endpoint, factory, listener)
        if port is None:
            return None
    except Exception:
        return fail()

    def start() -> IListeningPort:
        port.startListening()
        return port  # type: ignore[no-any-return]

    return execute(start)
