"""
Tests for the C{mtls:} endpoint strings.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from OpenSSL.SSL import X509VerificationCodes as Codes
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    clientFromString,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from mtlsd import (
    MtlsClientEndpoint,
    MtlsServerEndpoint,
    ServerContext,
    TrustReloader,
    _signals,
    peerIdentity,
)
from mtlsd._ocsp import OCSPChecker
from mtlsd._parser import DescriptionError
from mtlsd._pki import CLIENT_AUTH, certificatePEM, keyPEM, makeCertificate, newKey
from mtlsd._reasons import verifyErrorText
from mtlsd._signals import SignalFanOut
from mtlsd._verify import MOZILLA_GROUPS, OPENSSL_VERSION
from mtlsd.testing import (
    CertificateAuthority,
    Credentials,
    MemoryConnection,
    clientContext,
    selfSigned,
)


def writeFiles(case: SynchronousTestCase) -> dict[str, str]:
    """
    Server, client and CA files in a new directory, quoted for descriptions.
    """
    directory = os.path.abspath(case.mktemp())
    os.mkdir(directory)
    ca = CertificateAuthority()
    server, alice, bob = ca.server(), selfSigned("alice"), selfSigned("bob")
    files = {
        "server.pem": certificatePEM(server.certificate) + keyPEM(server.key),
        "alice.pem": certificatePEM(alice.certificate) + keyPEM(alice.key),
        "clients.pem": certificatePEM(alice.certificate),
        "bob.pem": certificatePEM(bob.certificate) + keyPEM(bob.key),
        "bob.crt": certificatePEM(bob.certificate),
        "ca.pem": certificatePEM(ca.certificate),
    }
    case.ca = ca  # type: ignore[attr-defined]
    paths = {}
    for name, data in files.items():
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        paths[name] = quoteStringArgument(path)
    return paths


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """
        Twisted finds the C{mtls} server and client parsers.
        """
        servers = [p for p in getPlugins(IStreamServerEndpointStringParser) if p.prefix == "mtls"]
        clients = [
            p
            for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
            if p.prefix == "mtls"
        ]
        self.assertEqual((len(servers), len(clients)), (1, 1))
        self.assertTrue(verifyObject(IStreamServerEndpointStringParser, servers[0]))
        self.assertTrue(verifyObject(IStreamClientEndpointStringParserWithReactor, clients[0]))


class ServerStringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files = writeFiles(self)

    def parse(self, description: str) -> Any:
        return serverFromString(MemoryReactorClock(), description)

    def test_port(self) -> None:
        """
        C{mtls:PORT:...} listens with mutual TLS on TCP.
        """
        reactor = MemoryReactorClock()
        endpoint = serverFromString(
            reactor,
            f"mtls:8443:interface=127.0.0.1:certKey={self.files['server.pem']}"
            f":clientCerts={self.files['clients.pem']},{self.files['bob.crt']}:allowCN=alice",
        )
        self.assertIsInstance(endpoint, MtlsServerEndpoint)
        self.addCleanup(self.successResultOf(endpoint.listen(Factory())).stopListening)
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8443, "127.0.0.1"))
        context = endpoint._context
        self.assertEqual(len(context.settings.trusted), 2)
        self.assertEqual(len(context.settings.policy.commonNames), 1)
        self.assertEqual(context.settings.groups, MOZILLA_GROUPS)

    def test_cryptoPolicy(self) -> None:
        """
        C{tlsGroups=} and C{tlsSigalgs=} choose the key-exchange groups and
        the signature algorithms, as C{--tls-groups} and C{--tls-sigalgs}.
        """
        endpoint = self.parse(
            f"mtls:8443:certKey={self.files['server.pem']}:clientCerts={self.files['clients.pem']}"
            ":tlsGroups=secp384r1\\:X25519:tlsSigalgs=ECDSA+SHA256"
        )
        settings = endpoint._context.settings
        self.assertEqual(settings.groups, ("secp384r1", "X25519"))
        self.assertEqual(settings.signatureAlgorithms, "ECDSA+SHA256")

    def test_ocsp(self) -> None:
        """
        C{ocsp=yes} and its companions check clients with OCSP, as the
        daemon's C{--ocsp*} options.
        """
        endpoint = self.parse(
            f"mtls:8443:certKey={self.files['server.pem']}:clientCerts={self.files['clients.pem']}"
            ":ocsp=yes:ocspResponder=http\\://127.0.0.1\\:8888/ocsp:ocspRequired=yes"
            ":ocspTimeout=1.5:ocspCheckChain=yes:ocspCacheSeconds=60"
        )
        [checker] = endpoint._context._checks
        self.assertIsInstance(checker, OCSPChecker)
        self.assertEqual(
            (
                checker._responder,
                checker._required,
                checker._timeout,
                checker._checkChain,
                checker._cacheSeconds,
            ),
            ("http://127.0.0.1:8888/ocsp", True, 1.5, True, 60.0),
        )
        plain = self.parse(
            f"mtls:8443:certKey={self.files['server.pem']}:clientCerts={self.files['clients.pem']}"
        )
        self.assertEqual(plain._context._checks, ())

    def test_clientCA(self) -> None:
        """
        C{clientCA=} trusts CAs to issue whatever their keyUsage, alone or
        beside C{clientCerts=}.
        """
        for trust in (
            f":clientCA={self.files['clients.pem']}",
            f":clientCerts={self.files['bob.crt']}:clientCA={self.files['clients.pem']}",
        ):
            endpoint = self.parse(f"mtls:0:certKey={self.files['server.pem']}{trust}")
            settings = endpoint._context.settings
            self.assertTrue(settings.clientCAs)
            self.assertLessEqual(set(settings.clientCAs), set(settings.issuers))

    def test_endpoint(self) -> None:
        """
        C{endpoint=} puts the TLS on any plain endpoint, e.g. a PROXY protocol
        one, so the header is read before the TLS.
        """
        reactor = MemoryReactorClock()
        endpoint = serverFromString(
            reactor,
            r"mtls:endpoint=haproxy\:tcp\:9443:"
            f"certKey={self.files['server.pem']}:clientCerts={self.files['clients.pem']}",
        )
        self.addCleanup(self.successResultOf(endpoint.listen(Factory())).stopListening)
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual(port, 9443)
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        # Twisted's PROXY wrapper (mtlsd's subclass says why it refused).
        self.assertIsInstance(factory, HAProxyWrappingFactory)

    def test_errors(self) -> None:
        """
        Unknown options, missing ones and bad files are named.
        """
        base = f"certKey={self.files['server.pem']}:clientCerts={self.files['clients.pem']}"
        for description, fragment in [
            (f"mtls:1:{base}:colour=blue", "unknown option 'colour'"),
            (f"mtls:1:certKey={self.files['server.pem']}", "clientCerts= is required"),
            ("mtls:1:certKey=/nope.pem:clientCerts=/nope.pem", "/nope.pem does not exist"),
            (f"mtls:{base}", "needs a port"),
            (f"mtls:1:{base}:endpoint=tcp\\:2", "endpoint= replaces the port"),
            (f"mtls:1:{base}:crlRequired=maybe", "crlRequired='maybe' must be yes or no"),
            (f"mtls:1:{base}:allowFingerprint=xyz", "is not a SHA-256 fingerprint"),
        ]:
            error = self.assertRaises(ValueError, self.parse, description)
            self.assertIn(fragment, str(error), description)


class ServerSettingsTests(SynchronousTestCase):
    """
    An C{mtls:} string builds the server as the daemon's options do.
    """

    def setUp(self) -> None:
        self.files = writeFiles(self)
        self.base = (
            f"certKey={self.files['server.pem']}:clientCerts={self.files['clients.pem']}"
            ":reloadInterval=0"
        )

    def test_backlog(self) -> None:
        """
        The listen backlog is the daemon's 1024 (not Twisted's 50: too few
        for a burst of connections) unless C{backlog=} says otherwise.
        """
        for extra, expected in [("", 1024), (":backlog=10", 10)]:
            reactor = MemoryReactorClock()
            endpoint = serverFromString(reactor, f"mtls:8443:{self.base}{extra}")
            self.addCleanup(self.successResultOf(endpoint.listen(Factory())).stopListening)
            [(port, factory, backlog, interface)] = reactor.tcpServers
            self.assertEqual(backlog, expected)

    def test_verifyDepth(self) -> None:
        """
        C{verifyDepth=N} admits a chain of a leaf, N intermediates and the
        root, and refuses a longer one (default: 4, as the daemon).
        """
        ca: CertificateAuthority = self.ca  # type: ignore[attr-defined]
        issuer = (ca.certificate, ca.key)
        intermediates: list[Any] = []
        for name in ("intermediate 1", "intermediate 2"):
            key = newKey()
            certificate = makeCertificate(name, key, issuer, isCA=True)
            intermediates.insert(0, certificate)
            issuer = (certificate, key)
        leafKey = newKey()
        leaf = makeCertificate("deep", leafKey, issuer, usages=(CLIENT_AUTH,))
        deep = Credentials(leaf, leafKey, intermediates)
        base = f"certKey={self.files['server.pem']}:clientCerts={self.files['ca.pem']}"
        for extra, admitted in [(":verifyDepth=1", False), (":verifyDepth=2", True), ("", True)]:
            events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
            endpoint = serverFromString(MemoryReactorClock(), f"mtls:8443:{base}{extra}")
            c = MemoryConnection(endpoint._context, clientContext(deep, [ca.certificate]))
            c.flush()
            self.assertEqual(c.app.made, admitted, extra)
            if not admitted:
                [rejected] = [e for e in events if e.get("mtlsdEvent") == "rejected"]
                self.assertEqual(rejected["reason"], verifyErrorText(Codes.ERR_CERT_CHAIN_TOO_LONG))

    def test_badValues(self) -> None:
        """
        A value that is not a number, or a number out of its range, is one
        line naming the key and the value, before any file is read.
        """
        for description, message in [
            (f"mtls:x:{self.base}", "mtls: port='x' is not a whole number"),
            (f"mtls:70000:{self.base}", "mtls: port='70000' must be from 0 to 65535"),
            (f"mtls:1:{self.base}:backlog=x", "mtls: backlog='x' is not a whole number"),
            (f"mtls:1:{self.base}:backlog=0", "mtls: backlog='0' must be at least 1"),
            (
                f"mtls:1:{self.base}:verifyDepth=2.5",
                "mtls: verifyDepth='2.5' is not a whole number",
            ),
            (f"mtls:1:{self.base}:verifyDepth=0", "mtls: verifyDepth='0' must be at least 1"),
            (
                f"mtls:1:{self.base}:handshakeTimeout=soon",
                "mtls: handshakeTimeout='soon' is not a number of seconds",
            ),
            (
                f"mtls:1:{self.base}:handshakeTimeout=0",
                "mtls: handshakeTimeout='0' must be more than 0 seconds",
            ),
            (
                f"mtls:1:{self.base}:handshakeTimeout=nan",
                "mtls: handshakeTimeout='nan' must be more than 0 seconds",
            ),
            (
                "mtls:1:certKey=/nope:clientCerts=/nope:reloadInterval=-1",
                "mtls: reloadInterval='-1' must be 0 (only on SIGHUP) or more seconds",
            ),
            (
                "mtls:1:certKey=/nope:clientCerts=/nope:reloadInterval=inf",
                "mtls: reloadInterval='inf' must be 0 (only on SIGHUP) or more seconds",
            ),
            (
                f"mtls:1:{self.base}:tlsMinVersion=1.1",
                "mtls: tlsMinVersion='1.1' must be 1.2 or 1.3",
            ),
            (
                f"mtls:1:{self.base}:tlsGroups=X448\\:X2559",
                "mtls: tlsGroups=X448:X2559: 'X2559' is not a TLS group "
                f"{OPENSSL_VERSION} knows; give OpenSSL names such as X25519:prime256v1.",
            ),
            (
                f"mtls:1:{self.base}:ocspRequired=yes",
                "mtls: ocspRequired= goes with ocsp=yes",
            ),
            (
                f"mtls:1:{self.base}:ocsp=yes:ocspResponder=ftp\\://x",
                "mtls: ocspResponder= 'ftp://x' is not an http:// or https:// URL of an OCSP"
                " responder.",
            ),
            (
                f"mtls:1:{self.base}:ocsp=yes:ocspTimeout=20",
                "mtls: ocspTimeout=20 must be shorter than handshakeTimeout=10",
            ),
            (
                f"mtls:1:{self.base}:ocsp=yes:ocspTimeout=0",
                "mtls: ocspTimeout='0' must be more than 0 seconds",
            ),
            (
                f"mtls:1:{self.base}:tlsSigalgs=MD5",
                f"mtls: tlsSigalgs=MD5: {OPENSSL_VERSION} does not accept this list of signature"
                " algorithms; give names such as ECDSA+SHA256:rsa_pss_rsae_sha256.",
            ),
            (
                f"mtls:{self.base}:endpoint=bogus\\:1",
                "mtls: endpoint='bogus:1': Unknown endpoint type: 'bogus'",
            ),
        ]:
            error = self.assertRaises(
                DescriptionError, serverFromString, MemoryReactorClock(), description
            )
            self.assertEqual(str(error), message)
        for description, message in [
            ("mtls:host=a:port=x:caCerts=/nope", "mtls: port='x' is not a whole number"),
            ("mtls:host=a:port=0:caCerts=/nope", "mtls: port='0' must be from 1 to 65535"),
            (
                "mtls:host=a:port=1:caCerts=/nope:tlsGroups=P-999",
                f"mtls: tlsGroups=P-999: 'P-999' is not a TLS group {OPENSSL_VERSION} knows;"
                " give OpenSSL names such as X25519:prime256v1.",
            ),
        ]:
            error = self.assertRaises(
                DescriptionError, clientFromString, MemoryReactorClock(), description
            )
            self.assertEqual(str(error), message)

    def test_valueErrorAndExit(self) -> None:
        """
        The error is a L{ValueError}, as Twisted's parsers raise, caught by
        C{except Exception}; uncaught, it ends a program with its sentence
        (L{SystemExit}'s code) rather than a traceback.
        """
        error = self.assertRaises(ValueError, serverFromString, MemoryReactorClock(), "mtls:1:x=y")
        self.assertIsInstance(error, Exception)
        self.assertIsInstance(error, SystemExit)
        self.assertEqual(error.code, str(error))
        self.assertTrue(str(error).startswith("mtls: server endpoint: unknown option 'x'"))


class ReloaderLifetimeTests(SynchronousTestCase):
    """
    The reloader an C{mtls:} endpoint starts lives and dies with its port.
    """

    def setUp(self) -> None:
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        self.sighup = SignalFanOut(signal.SIGHUP)  # none of other tests' subscribers
        self.patch(_signals, "sighup", self.sighup)
        self.files = writeFiles(self)
        self.reactor = MemoryReactorClock()
        self.description = (
            f"mtls:8443:certKey={self.files['server.pem']}:clientCerts={self.files['clients.pem']}"
        )

    def trust(self, name: str) -> None:
        """
        Trust only C{name}'s certificate from now on.
        """
        with open(self.files[name], "rb") as f:
            pem = f.read()
        with open(self.files["clients.pem"], "wb") as f:
            f.write(pem)

    def test_stopListeningStopsReloader(self) -> None:
        """
        C{listen} gives an L{IListeningPort} whose C{stopListening} stops the
        reloader C{listen} started: it polls the files no more and answers
        SIGHUP no more.
        """
        endpoint = serverFromString(self.reactor, self.description)
        port = self.successResultOf(endpoint.listen(Factory()))
        self.assertTrue(verifyObject(IListeningPort, port))
        self.assertEqual(port.getHost().port, 8443)
        reloader = endpoint._reloader
        self.trust("bob.crt")
        self.reactor.advance(2)
        self.assertEqual(reloader.reloads, 1)
        self.assertEqual(self.sighup.subscribers, 1)

        self.assertIsNone(self.successResultOf(port.stopListening()))
        self.assertFalse(reloader.running)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.sighup.subscribers, 0)
        with open(self.files["clients.pem"], "wb"):
            pass  # a change the poll would see (and fail to load)
        self.reactor.advance(10)
        self.assertEqual((reloader.reloads, reloader.failures), (1, 0))

    def test_relisten(self) -> None:
        """
        Listening again (C{startListening}, or another C{listen}) starts the
        reloader again; it stops with the last port of the endpoint.
        """
        endpoint = serverFromString(self.reactor, self.description)
        first = self.successResultOf(endpoint.listen(Factory()))
        second = self.successResultOf(endpoint.listen(Factory()))
        reloader = endpoint._reloader
        first.stopListening()
        self.assertTrue(reloader.running)
        second.stopListening()
        second.stopListening()  # twice: no harm
        self.assertFalse(reloader.running)
        first.startListening()
        self.assertTrue(reloader.running)
        first.stopListening()
        self.assertFalse(reloader.running)

    def test_listenFailed(self) -> None:
        """
        When listening fails, the reloader C{listen} started stops.
        """
        reactor = RaisingMemoryReactor(listenException=CannotListenError("", 8443, OSError()))
        endpoint = serverFromString(reactor, self.description + ":reloadInterval=0")
        self.failureResultOf(endpoint.listen(Factory()), CannotListenError)
        self.assertFalse(endpoint._reloader.running)
        self.assertEqual(self.sighup.subscribers, 0)

    def test_reloaderStartedElsewhere(self) -> None:
        """
        A reloader already running when C{listen} is called (a service of
        the program's) is the program's to stop: the port leaves it alone.
        """
        clock = Clock()
        endpoint = serverFromString(self.reactor, self.description)
        context: ServerContext = endpoint._context
        reloader = TrustReloader(context, lambda: context.settings, [], clock, 0)
        reloader.startService()
        self.addCleanup(reloader.stopService)
        mine = MtlsServerEndpoint(
            context, TCP4ServerEndpoint(self.reactor, 8444), reloader=reloader
        )
        port = self.successResultOf(mine.listen(Factory()))
        port.stopListening()
        self.assertTrue(reloader.running)


class ClientStringTests(SynchronousTestCase):
    def test_client(self) -> None:
        """
        C{mtls:host=...:port=...} makes mtlsd's client endpoint; unknown
        options are named.
        """
        files = writeFiles(self)
        endpoint = clientFromString(
            MemoryReactorClock(),
            f"mtls:host=localhost:port=8443:certKey={files['alice.pem']}:caCerts={files['ca.pem']}",
        )
        self.assertIsInstance(endpoint, MtlsClientEndpoint)
        error = self.assertRaises(
            ValueError,
            clientFromString,
            MemoryReactorClock(),
            "mtls:host=a:port=1:caCerts=x:cert=y",
        )
        self.assertIn("unknown option 'cert'", str(error))


class Whoami(Protocol):
    def connectionMade(self) -> None:
        identity = peerIdentity(self.transport)
        self.transport.write(f"{identity.commonName}\n".encode())  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class Reader(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


class LoopbackTests(TestCase):
    @inlineCallbacks
    def test_serverAndClientStrings(self) -> Any:
        """
        A server from an C{mtls:} string and a client from another talk
        mutual TLS; the server's protocol reads the client's identity; a
        client the allow-list does not name is turned away.
        """
        files = writeFiles(self)
        server = serverFromString(
            reactor,
            f"mtls:0:interface=127.0.0.1:certKey={files['server.pem']}"
            f":clientCerts={files['clients.pem']},{files['bob.crt']}:allowCN=alice",
        )
        port = yield server.listen(Factory.forProtocol(Whoami))
        # Stops the reloader too: trial would find its poll left behind.
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        results = []
        for who in ("alice", "bob"):
            client = clientFromString(
                reactor,
                f"mtls:host=127.0.0.1:port={number}:servername=localhost"
                f":certKey={files[who + '.pem']}:caCerts={files['ca.pem']}",
            )
            protocol = yield client.connect(Factory.forProtocol(Reader))
            results.append((yield protocol.done))
        self.assertEqual(results, [b"alice\n", b""])
