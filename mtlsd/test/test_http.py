"""
Tests for L{mtlsd._http}, the HTTP forwarding mode, over real loopback
sockets: mtlsd between a TLS client that writes raw HTTP and a real
twisted.web backend (or a raw backend, for what twisted.web does not do),
each header checked as the backend received it.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer, provider

from mtlsd import ClientTLSSettings, ConnectionLimits, MtlsServerEndpoint
from mtlsd._http import MAX_HEAD, HTTPForwardFactory
from mtlsd._httpidentity import HTTPIdentity
from mtlsd._pki import makeCertificate, newKey
from mtlsd.testing import CertificateAuthority, Credentials, serverContext


class HeaderEcho(Resource):
    """
    Answers with what it received: method, path, headers (as received),
    body length.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/missing":
            request.setResponseCode(404)
        return json.dumps(
            {
                "method": request.method.decode(),
                "path": request.uri.decode(),
                "headers": [
                    [name.decode(), value.decode()]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
                "length": len(body),
            }
        ).encode()


class RecordingChannel(HTTPChannel):
    """
    twisted.web's HTTP channel, recording the raw bytes it receives (on its
    site's C{received}) and counting connections.
    """

    def connectionMade(self) -> None:
        self.site.connections += 1  # type: ignore[attr-defined]
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.site.received.append(data)  # type: ignore[attr-defined]
        super().dataReceived(data)


class RawBackend(Protocol):
    """
    A backend answering each request head with C{answer}, then (C{echo})
    echoing every byte: a close-delimited answer, or a protocol switch.
    """

    def __init__(self, answer: bytes, close: bool, echo: bool) -> None:
        self.answer, self.close, self.echo = answer, close, echo
        self.head = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        if self.answered:
            if self.echo:
                self.transport.write(data)  # type: ignore[union-attr]
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.answered = True
            rest = self.head.partition(b"\r\n\r\n")[2]
            self.transport.write(self.answer)  # type: ignore[union-attr]
            if self.echo and rest:
                self.transport.write(rest)  # type: ignore[union-attr]
            if self.close:
                self.transport.loseConnection()  # type: ignore[union-attr]


@implementer(IPushProducer)
class StreamingBackend(Protocol):
    """
    A backend answering a request with C{size} bytes, written as fast as
    its transport takes them (a push producer that stops when paused).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.written = 0
        self.paused = False
        self.firstPause: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and not self.written:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)  # type: ignore[union-attr]
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        if not self.firstPause.called:
            self.firstPause.callback(None)

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = b"z" * 65536
        while not self.paused and self.written < self.size:
            self.transport.write(chunk)  # type: ignore[union-attr]
            self.written += len(chunk)
        if self.written >= self.size:
            self.transport.unregisterProducer()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self.paused = True


class RawClient(Protocol):
    """
    A TLS client writing raw HTTP: C{received} holds every byte of the
    answers; L{waitFor} fires once they match a pattern.
    """

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[None] = Deferred()
        self._waiting: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            match = entry[0].search(self.received)
            if match:
                self._waiting.remove(entry)
                entry[1].callback(match)

    def waitFor(self, pattern: bytes) -> Deferred[re.Match[bytes]]:
        waiting: Deferred[re.Match[bytes]] = Deferred()
        self._waiting.append((re.compile(pattern, re.S), waiting))
        self._check()
        return waiting

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


def answers(received: bytes) -> list[tuple[int, bytes]]:
    """
    The status and body of each C{Content-Length} answer in C{received}.
    """
    found = []
    for match in re.finditer(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n(.*?)\r\n\r\n", received, re.S | re.I):
        length = re.search(rb"content-length: (\d+)", match.group(2), re.I)
        size = int(length.group(1)) if length else 0
        found.append((int(match.group(1)), received[match.end() : match.end() + size]))
    return found


def backendHeads(received: list[bytes]) -> list[list[tuple[bytes, bytes]]]:
    """
    The header lines of each request head the backend received, as they
    were on the wire.
    """
    heads = []
    for head in b"".join(received).split(b"\r\n\r\n")[:-1]:
        lines = head.split(b"\r\n")
        if not re.match(rb"[A-Z]+ \S+ HTTP/1\.1$", lines[0]):
            continue  # a body
        heads.append(
            [(name, value) for name, _, value in (line.partition(b": ") for line in lines[1:])]
        )
    return heads


class HTTPForwardingTests(TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.alice = self.ca.issue("alice", uris=["spiffe://example.org/alice"])
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.limits = ConnectionLimits()

    @inlineCallbacks
    def listen(self, endpoint: Any, factory: Any) -> Any:
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def webBackend(self) -> Any:
        site: Any = Site(HeaderEcho())
        site.protocol = RecordingChannel
        site.received = []
        site.connections = 0
        self.site = site
        port = yield self.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), site)
        return port

    @inlineCallbacks
    def rawBackend(self, answer: bytes, close: bool = False, echo: bool = False) -> Any:
        self.raw: list[RawBackend] = []

        def build() -> RawBackend:
            self.raw.append(RawBackend(answer, close, echo))
            return self.raw[-1]

        port = yield self.listen(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Factory.forProtocol(build)
        )
        return port

    @inlineCallbacks
    def connect(
        self,
        backendPort: int | None = None,
        identity: HTTPIdentity | None = None,
        client: Credentials | None = None,
    ) -> Any:
        """
        mtlsd forwarding HTTP to C{backendPort} (by default a new
        twisted.web backend), and a client connected to it.
        """
        if backendPort is None:
            backendPort = yield self.webBackend()
        client = client or self.alice
        factory = HTTPForwardFactory(
            TCP4ClientEndpoint(reactor, "127.0.0.1", backendPort),
            identity or HTTPIdentity(),
            b"backend.test",
        )
        build = factory.buildProtocol
        self.clients: list[Any] = []

        def recordClient(addr: Any) -> Any:
            self.clients.append(build(addr))
            return self.clients[-1]

        factory.buildProtocol = recordClient  # type: ignore[method-assign]
        daemon = MtlsServerEndpoint(
            serverContext(self.ca.server(), [self.ca.certificate]),
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            limits=self.limits,
        )
        self.port = yield self.listen(daemon, factory)
        settings = ClientTLSSettings(
            client.certificate, client.key, client.chain, (self.ca.certificate,)
        )
        raw = RawClient()
        yield settings.endpoint(reactor, "127.0.0.1", self.port, "localhost").connect(
            Factory.forProtocol(lambda: raw)
        )
        self.addCleanup(lambda: raw.done.called or raw.transport.abortConnection())  # type: ignore[union-attr]
        return raw

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("mtlsdEvent") == name]

    def logged(self, name: str) -> Deferred[dict[str, Any]]:
        """
        Fire with the first event C{name}, now or when it is logged.
        """
        waiting: Deferred[dict[str, Any]] = Deferred()

        @provider(ILogObserver)
        def observe(event: Any) -> None:
            if event.get("mtlsdEvent") == name and not waiting.called:
                waiting.callback(event)

        for event in self.named(name):
            observe(event)
        if not waiting.called:
            globalLogPublisher.addObserver(observe)
            self.addCleanup(globalLogPublisher.removeObserver, observe)
        return waiting

    @inlineCallbacks
    def test_identityHeaders(self) -> Any:
        """
        The backend gets C{Client-Cert}, the client's DER certificate as an
        RFC 9440 byte sequence, byte for byte; C{X-Forwarded-For},
        C{X-Forwarded-Proto} and C{Forwarded}; and the client's own headers.
        """
        client = yield self.connect()
        client.transport.write(b"GET /a?b=c HTTP/1.1\r\nHost: svc\r\nX-Mine: 1\r\n\r\n")
        yield client.waitFor(rb"\r\n\r\n\{.*\}")
        [head] = backendHeads(self.site.received)
        der = self.alice.certificate.public_bytes(Encoding.DER)
        self.assertIn((b"Client-Cert", b":" + base64.b64encode(der) + b":"), head)
        self.assertIn((b"X-Forwarded-For", b"127.0.0.1"), head)
        self.assertIn((b"X-Forwarded-Proto", b"https"), head)
        self.assertIn((b"Forwarded", b"for=127.0.0.1;proto=https"), head)
        self.assertIn((b"Host", b"svc"), head)
        self.assertIn((b"X-Mine", b"1"), head)
        [(status, body)] = answers(client.received)
        self.assertEqual((status, json.loads(body)["path"]), (200, "/a?b=c"))
        [event] = self.named("http-request")
        self.assertEqual(
            (event["method"], event["path"], event["status"], event["commonName"]),
            ("GET", "/a", 200, "alice"),
        )

    @inlineCallbacks
    def test_clientCertChain(self) -> Any:
        """
        A client that sends an intermediate: C{Client-Cert-Chain} holds it,
        as one byte sequence per certificate.
        """
        key = newKey()
        intermediate = makeCertificate(
            "Intermediate", key, (self.ca.certificate, self.ca.key), isCA=True
        )
        leafKey = newKey()
        leaf = makeCertificate("bob", leafKey, (intermediate, key), usages=[])
        client = yield self.connect(client=Credentials(leaf, leafKey, (intermediate,)))
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.waitFor(rb"\r\n\r\n\{.*\}")
        [head] = backendHeads(self.site.received)
        der = intermediate.public_bytes(Encoding.DER)
        self.assertIn((b"Client-Cert-Chain", b":" + base64.b64encode(der) + b":"), head)

    @inlineCallbacks
    def test_forgedHeadersRemoved(self) -> Any:
        """
        A client's own identity headers, in any case, duplicated, with C{_}
        for C{-}, or hidden in an obsolete line fold, never reach the
        backend as headers: each request carries mtlsd's one copy.  One
        warning for the connection, however many requests tried.
        """
        forged = (
            b"client-cert: :Zm9yZ2Vk:\r\nCLIENT-CERT: :Zm9yZ2Vk:\r\nClient_Cert: :Zm9yZ2Vk:\r\n"
            b"Client-Cert-Chain: :Zm9yZ2Vk:\r\nx-forwarded-for: 10.0.0.1\r\n"
            b"X-Forwarded-For: 10.0.0.2\r\nX-FORWARDED-PROTO: http\r\n"
            b"Forwarded: for=10.0.0.1\r\nX-Forwarded-Client-Cert: Hash=00\r\n"
            b"X-Client-CN: root\r\nX-Other: a\r\n Client-Cert: :Zm9yZ2Vk:\r\n"
        )
        identity = HTTPIdentity(fields=(("X-Client-CN", "cn"),))
        client = yield self.connect(identity=identity)
        request = b"GET / HTTP/1.1\r\nHost: svc\r\n" + forged + b"\r\n"
        client.transport.write(request + request)
        yield client.waitFor(rb"(\r\n\r\n\{[^\r]*\}.*){2}")
        heads = backendHeads(self.site.received)
        self.assertEqual(len(heads), 2)
        der = self.alice.certificate.public_bytes(Encoding.DER)
        for head in heads:
            names = [name.lower().replace(b"_", b"-") for name, _ in head]
            for name in (
                b"client-cert",
                b"x-forwarded-for",
                b"x-forwarded-proto",
                b"forwarded",
                b"x-client-cn",
            ):
                self.assertEqual(names.count(name), 1, name)
            self.assertLessEqual(names.count(b"client-cert-chain"), 1)
            self.assertNotIn(b"x-forwarded-client-cert", names)
            values = dict((name.lower(), value) for name, value in head)
            self.assertEqual(values[b"client-cert"], b":" + base64.b64encode(der) + b":")
            self.assertEqual(values[b"x-forwarded-for"], b"127.0.0.1")
            self.assertEqual(values[b"x-client-cn"], b"alice")
            self.assertNotIn(b"Zm9yZ2Vk", values.get(b"client-cert-chain", b""))
            # The fold is the value of X-Other, unfolded; not a header.
            self.assertEqual(values[b"x-other"], b"a Client-Cert: :Zm9yZ2Vk:")
        [warning] = self.named("forged-headers")
        self.assertEqual(warning["commonName"], "alice")
        self.assertEqual(
            warning["headers"],
            "client-cert, client-cert-chain, client_cert, forwarded, x-client-cn,"
            " x-forwarded-client-cert, x-forwarded-for, x-forwarded-proto",
        )

    @inlineCallbacks
    def test_keepAliveManyRequests(self) -> Any:
        """
        A hundred requests on one client connection are answered on one
        backend connection.
        """
        client = yield self.connect()
        for i in range(100):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: svc\r\n\r\n" % i)
            yield client.waitFor(rb'"path": "/%d"' % i)
        self.assertEqual(len(answers(client.received)), 100)
        self.assertEqual(self.site.connections, 1)
        # Nagle's algorithm off: a body written after its head does not wait
        # for the backend's delayed ACK.
        [forwarding] = self.clients
        backendSocket = forwarding.backend.transport.getHandle()
        self.assertTrue(backendSocket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @inlineCallbacks
    def test_pipelined(self) -> Any:
        """
        Requests written at once are answered in their order.
        """
        client = yield self.connect()
        client.transport.write(
            b"".join(b"GET /%d HTTP/1.1\r\nHost: svc\r\n\r\n" % i for i in range(5))
        )
        yield client.waitFor(rb'"path": "/4"')
        paths = [json.loads(body)["path"] for _, body in answers(client.received)]
        self.assertEqual(paths, ["/0", "/1", "/2", "/3", "/4"])

    @inlineCallbacks
    def test_bodies(self) -> Any:
        """
        A C{Content-Length} body and a chunked one reach the backend whole;
        a 404 is passed on and counted by its status.
        """
        client = yield self.connect()
        body = b"x" * 100_000
        client.transport.write(
            b"POST /cl HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b"y" * 1000) for _ in range(50)) + b"0\r\n\r\n"
        client.transport.write(
            b"POST /chunked HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
        )
        client.transport.write(b"GET /missing HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.waitFor(rb'"path": "/missing"')
        [(_, first), (_, second), (status, _)] = answers(client.received)
        self.assertEqual(json.loads(first)["length"], 100_000)
        self.assertEqual(json.loads(second)["length"], 50_000)
        self.assertEqual(status, 404)
        self.assertEqual([e["status"] for e in self.named("http-request")], [200, 200, 404])

    @inlineCallbacks
    def test_slowClientPausesBackend(self) -> Any:
        """
        A 256 MiB answer to a client that stops reading: the backend is
        paused well short of it (mtlsd does not buffer the answer); once the
        client reads again, every byte arrives.
        """
        backends: list[StreamingBackend] = []
        started: Deferred[None] = Deferred()

        def build() -> StreamingBackend:
            backends.append(StreamingBackend(256 * 1024 * 1024))
            started.callback(None)
            return backends[-1]

        port = yield self.listen(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), Factory.forProtocol(build)
        )
        client = yield self.connect(port)
        counted = [0]
        done: Deferred[None] = Deferred()

        def count(data: bytes) -> None:
            counted[0] += len(data)
            if counted[0] >= 256 * 1024 * 1024 + 38 and not done.called:
                done.callback(None)

        client.dataReceived = count
        client.transport.write(b"GET /big HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield started
        client.transport.pauseProducing()  # the client stops reading
        [backend] = backends
        yield backend.firstPause
        # Nothing marks "the backend stays paused": give it half a second to
        # run on, had mtlsd read and buffered the answer instead (it then
        # writes far more than this bound; with back-pressure it cannot,
        # however long it is given).
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertLess(backend.written, 32 * 1024 * 1024)
        client.transport.resumeProducing()
        yield done
        self.assertEqual(backend.written, 256 * 1024 * 1024)

    @inlineCallbacks
    def test_closeDelimitedAnswer(self) -> Any:
        """
        A backend answer with no length, ended by its close, reaches an
        HTTP/1.1 client chunked, and the client connection stays open for
        the next request (on a new backend connection).
        """
        port = yield self.rawBackend(b"HTTP/1.0 200 OK\r\n\r\nuntil the close", close=True)
        client = yield self.connect(port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.waitFor(rb"0\r\n\r\n$")
        self.assertIn(b"transfer-encoding: chunked", client.received.lower())
        self.assertIn(b"until the close", client.received)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.waitFor(rb"(until the close.*){2}0\r\n\r\n$")
        self.assertEqual(len(self.raw), 2)

    @inlineCallbacks
    def test_expectContinue(self) -> Any:
        """
        C{Expect: 100-continue}: the backend's C{100 Continue} reaches the
        client before it sends the body, then the answer.
        """
        client = yield self.connect()
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        yield client.waitFor(rb"^HTTP/1\.1 100 ")
        client.transport.write(b"hello")
        yield client.waitFor(rb'"length": 5')

    @inlineCallbacks
    def test_upgrade(self) -> Any:
        """
        After the backend's C{101 Switching Protocols}, bytes go both ways
        as they are (a WebSocket).
        """
        port = yield self.rawBackend(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            echo=True,
        )
        client = yield self.connect(port)
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        yield client.waitFor(rb"^HTTP/1\.1 101 .*\r\n\r\n")
        self.assertIn(b"upgrade: websocket", client.received.lower())
        [backend] = self.raw
        self.assertIn(b"upgrade: websocket", backend.head.lower())
        self.assertIn(b"connection: upgrade", backend.head.lower())
        client.transport.write(b"\x81\x05hello not HTTP at all \r\n\r\n")
        yield client.waitFor(rb"\x81\x05hello not HTTP at all \r\n\r\n$")

    @inlineCallbacks
    def test_http10(self) -> Any:
        """
        An HTTP/1.0 request without C{Host} is forwarded with the backend's
        host, answered, and the connection closed.
        """
        client = yield self.connect()
        client.transport.write(b"GET /old HTTP/1.0\r\n\r\n")
        yield client.done
        [head] = backendHeads(self.site.received)
        self.assertIn((b"Host", b"backend.test"), head)
        [(status, body)] = answers(client.received)
        self.assertEqual((status, json.loads(body)["path"]), (200, "/old"))

    @inlineCallbacks
    def test_head(self) -> Any:
        """
        A HEAD answer has its length but no body, and the connection goes
        on.
        """
        client = yield self.connect()
        client.transport.write(b"HEAD / HTTP/1.1\r\nHost: svc\r\n\r\n")
        client.transport.write(b"GET /after HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.waitFor(rb'"path": "/after"')
        first, _, rest = client.received.partition(b"\r\n\r\n")
        self.assertIn(b"content-length:", first.lower())
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 "), rest[:40])

    @inlineCallbacks
    def test_headTooLarge(self) -> Any:
        """
        A request head over 64 KiB is answered 431, and the connection
        closed; nothing reaches the backend.
        """
        client = yield self.connect()
        client.transport.write(
            b"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + b"a" * (MAX_HEAD + 1024) + b"\r\n\r\n"
        )
        yield client.done
        self.assertTrue(client.received.startswith(b"HTTP/1.1 431 "), client.received[:60])
        self.assertEqual(self.site.received, [])

    @inlineCallbacks
    def test_malformed(self) -> Any:
        """
        A malformed request is answered 400 with a short body, and closed.
        """
        client = yield self.connect()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc\r\nno colon here\r\n\r\n")
        yield client.done
        [(status, body)] = answers(client.received)
        self.assertEqual(status, 400)
        self.assertIn(b"Bad request", body)
        self.assertEqual([e["status"] for e in self.named("http-request")], [400])

    @inlineCallbacks
    def test_backendDown(self) -> Any:
        """
        A backend that refuses the connection: 502 with a short body, and
        the C{backend-unavailable} event.
        """
        client = yield self.connect(backendPort=1)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.done
        [(status, body)] = answers(client.received)
        self.assertEqual(status, 502)
        self.assertIn(b"Bad gateway", body)
        [event] = self.named("backend-unavailable")
        self.assertIn("refused", event["error"])

    @inlineCallbacks
    def test_backendClosesWithoutAnswer(self) -> Any:
        """
        A backend that takes the request and closes without a byte of
        answer: 502, logged in plain words.
        """
        port = yield self.rawBackend(b"", close=True)
        client = yield self.connect(port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.done
        [(status, _)] = answers(client.received)
        self.assertEqual(status, 502)
        [event] = self.named("backend-unavailable")
        self.assertEqual(event["error"], "the backend closed the connection without answering")

    @inlineCallbacks
    def test_idleTimeout(self) -> Any:
        """
        A keep-alive connection left idle is closed by the idle timeout.
        """
        self.limits = ConnectionLimits(idleTimeout=0.2)
        client = yield self.connect()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        yield client.waitFor(rb"\r\n\r\n\{.*\}")
        yield client.done
        [event] = self.named("timeout")
        self.assertEqual(event["limit"], "idle-timeout")

    @inlineCallbacks
    def test_notTLS(self) -> Any:
        """
        A plain HTTP request to the TLS port is answered 400 with a sentence
        saying it is an HTTPS port that wants a client certificate, and
        logged C{not TLS}.
        """
        yield self.connect()
        received: list[bytes] = []
        done: Deferred[None] = Deferred()

        class Plain(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # type: ignore[union-attr]

            def dataReceived(self, data: bytes) -> None:
                received.append(data)

            def connectionLost(self, reason: Any = None) -> None:
                done.callback(None)

        yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(
            Factory.forProtocol(Plain)
        )
        yield done
        [(status, body)] = answers(b"".join(received))
        self.assertEqual(status, 400)
        self.assertIn(b"HTTPS port", body)
        self.assertIn(b"client certificate", body)
        event = yield self.logged("rejected")
        self.assertEqual(event["reason"], "not TLS")
