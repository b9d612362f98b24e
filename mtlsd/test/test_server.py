"""
Tests for L{mtlsd._server}: real TLS handshakes in memory between mtlsd's
server and client contexts.
"""

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL.SSL import X509VerificationCodes as Codes
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.wire import Echo
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from mtlsd import peerIdentity
from mtlsd._client import ServerRejectedClient, describeClientFailure
from mtlsd._errors import ConfigurationError
from mtlsd._identity import identityFromCertificate
from mtlsd._pki import CLIENT_AUTH, SERVER_AUTH, makeCertificate, newKey
from mtlsd._policy import ALLOW_KINDS, AllowPolicy
from mtlsd._reasons import verifyErrorText
from mtlsd._server import ConnectionLimits, mtlsServerFactory
from mtlsd._settings import ServerTLSSettings, isIssuingCA
from mtlsd.test.helpers import CLIENT_ADDRESS, hoursAgo
from mtlsd.testing import (
    CertificateAuthority,
    Credentials,
    MemoryConnection,
    RecordingProtocol,
    clientContext,
    selfSigned,
    serverContext,
)


class _LoggingTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )

    def mtlsdEvents(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("mtlsdEvent") == name]


class AcceptTests(_LoggingTestCase):
    """
    Clients whose certificate is trusted get through to the application.
    """

    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority()
        self.server = self.ca.server()

    def test_certificateNotKept(self) -> None:
        """
        An admitted connection keeps no parsed certificate (about 3 KiB each
        with its extensions): the gate reads it again from the TLS
        connection when the trust changes, with the intermediates sent.
        """
        intermediateKey = newKey()
        intermediate = makeCertificate(
            "Intermediate", intermediateKey, (self.ca.certificate, self.ca.key), isCA=True
        )
        leafKey = newKey()
        leaf = makeCertificate("frank", leafKey, (intermediate, intermediateKey))
        c = MemoryConnection(
            serverContext(self.server, [self.ca.certificate]),
            clientContext(Credentials(leaf, leafKey, [intermediate]), [self.ca.certificate]),
        )
        c.flush()
        self.assertTrue(c.app.made)
        gate: Any = c.serverTLS.wrappedProtocol
        kept = [v for v in vars(gate).values() if isinstance(v, (x509.Certificate, tuple))]
        self.assertEqual(kept, [])
        self.assertEqual(gate.peer(), (leaf, (intermediate,)))
        self.assertEqual(gate.peerNotAfter, leaf.not_valid_after_utc)

    def test_trustedSelfSignedClient(self) -> None:
        """
        A self-signed client certificate listed in the bundle is accepted, the
        application sees its bytes, and one C{accepted} event names it.
        """
        client = selfSigned("alice")
        c = MemoryConnection(
            serverContext(self.server, [client.certificate]),
            clientContext(client, [self.ca.certificate]),
        )
        c.flush()
        self.assertTrue(c.app.made)
        c.clientTLS.write(b"Hello, world!")
        c.flush()
        self.assertEqual(c.app.received, b"Hello, world!")
        [accepted] = self.mtlsdEvents("accepted")
        self.assertEqual(accepted["commonName"], "alice")
        self.assertEqual(accepted["client"], "192.0.2.7:40001")
        self.assertEqual(accepted["fingerprint"], peerIdentity(c.app.transport).fingerprint)
        self.assertEqual(self.mtlsdEvents("rejected"), [])

    def test_caIssuedClient(self) -> None:
        """
        A client certificate issued by a CA in the bundle is accepted.
        """
        client = self.ca.issue("bob")
        c = MemoryConnection(
            serverContext(self.server, [self.ca.certificate]),
            clientContext(client, [self.ca.certificate]),
        )
        c.flush()
        self.assertTrue(c.app.made)
        self.assertEqual(peerIdentity(c.app.transport).commonName, "bob")

    def test_pinnedLeafWithoutItsCA(self) -> None:
        """
        A CA-issued leaf listed alone is trusted (partial chain); another
        leaf of the same CA is not.
        """
        pinned = self.ca.issue("pinned")
        other = self.ca.issue("other")
        context = serverContext(self.server, [pinned.certificate])
        ok = MemoryConnection(context, clientContext(pinned, [self.ca.certificate]))
        ok.flush()
        self.assertTrue(ok.app.made)
        bad = MemoryConnection(context, clientContext(other, [self.ca.certificate]))
        bad.flush()
        self.assertFalse(bad.app.made)
        [rejected] = self.mtlsdEvents("rejected")
        # The client sends the pinned CA along (it is in its trust store).
        self.assertEqual(rejected["reason"], "self-signed certificate in certificate chain")

    def test_advertisesClientCANames(self) -> None:
        """
        The server sends the subjects of the bundle's certificates as the
        acceptable client CA names (Twisted alone sends none).
        """
        alice = selfSigned("alice")
        c = MemoryConnection(
            serverContext(self.server, [self.ca.certificate, alice.certificate]),
            clientContext(alice, [self.ca.certificate]),
        )
        c.flush()
        names = [n.CN for n in c.clientConnection.get_client_ca_list()]
        self.assertEqual(names, ["Test CA", "alice"])

    def test_alpn(self) -> None:
        """
        A client offering ALPN (as curl and browsers do) is served: the
        application's protocol is chosen when it negotiates one, and none
        when it does not (Twisted alone fails such handshakes with an
        internal error).
        """
        client = selfSigned("alice")
        for acceptable, chosen in [([b"http/1.1"], b"http/1.1"), (None, None)]:
            offering = clientContext(client, [self.ca.certificate])
            connect = offering.clientConnectionForTLS

            def offer(tlsProtocol: Any, connect: Any = connect) -> Any:
                connection = connect(tlsProtocol)
                connection.set_alpn_protos([b"h2", b"http/1.1"])
                return connection

            offering.clientConnectionForTLS = offer  # type: ignore[method-assign]
            app = Factory.forProtocol(RecordingProtocol)
            if acceptable:
                app.acceptableProtocols = lambda a=acceptable: a  # type: ignore[attr-defined]
                directlyProvides(app, IProtocolNegotiationFactory)
            c = MemoryConnection(serverContext(self.server, [client.certificate]), offering, app)
            c.flush()
            self.assertTrue(c.app.made, acceptable)
            self.assertEqual(c.clientConnection.get_alpn_proto_negotiated() or None, chosen)

    def test_severalSelfSignedToldApart(self) -> None:
        """
        Several self-signed certificates in one bundle are each accepted, and
        the log tells them apart by CN and fingerprint.
        """
        alice, bob = selfSigned("alice"), selfSigned("bob")
        context = serverContext(self.server, [alice.certificate, bob.certificate])
        for client in (alice, bob):
            MemoryConnection(context, clientContext(client, [self.ca.certificate])).flush()
        accepted = self.mtlsdEvents("accepted")
        self.assertEqual([e["commonName"] for e in accepted], ["alice", "bob"])
        self.assertNotEqual(accepted[0]["fingerprint"], accepted[1]["fingerprint"])

    def test_echoAndClosedEvent(self) -> None:
        """
        The echo app writes back what it reads; when the client closes, a
        C{closed} event gives the bytes in and out.
        """
        client = selfSigned("alice")
        c = MemoryConnection(
            serverContext(self.server, [client.certificate]),
            clientContext(client, [self.ca.certificate]),
            Factory.forProtocol(Echo),
        )
        c.flush()
        c.clientTLS.write(b"hello\n")
        c.flush()
        self.assertEqual(c.client.received, b"hello\n")
        c.clientTLS.loseConnection()
        c.flush()
        self.assertIsNone(
            describeClientFailure(
                c.client.lost,
                c.clientContext,
                None,
            )
        )
        [closed] = self.mtlsdEvents("closed")
        self.assertEqual((closed["bytesIn"], closed["bytesOut"]), (6, 6))

    def test_answerBeforePeerCloseIsSent(self) -> None:
        """
        When the client's last bytes and its close_notify arrive together,
        the echo's answer still reaches the client before the server's own
        close_notify (Twisted's buffering TLS transport dropped it).
        """
        client = selfSigned("alice")
        c = MemoryConnection(
            serverContext(self.server, [client.certificate]),
            clientContext(client, [self.ca.certificate]),
            Factory.forProtocol(Echo),
        )
        c.flush()
        payload = b"x" * 9000
        c.clientTLS.write(payload)
        c.clientTLS.loseConnection()
        c.flush()
        self.assertEqual(c.client.received, payload)
        self.assertIsNone(
            describeClientFailure(
                c.client.lost,
                c.clientContext,
                None,
            )
        )


class RejectTests(_LoggingTestCase):
    """
    Clients without a trusted, valid client certificate never reach the
    application, and each rejection is logged once with its reason.
    """

    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority()
        self.server = self.ca.server()
        self.trusted = selfSigned("trusted")
        self.built: list[RecordingProtocol] = []

    def assertRejected(self, client, reason: str, trusted=None, **kw: Any) -> MemoryConnection:
        c = MemoryConnection(
            serverContext(self.server, trusted or [self.trusted.certificate], **kw),
            clientContext(client, [self.ca.certificate]),
            twistedClient=True,
        )
        c.flush()
        self.assertFalse(c.app.made)
        self.assertIsNotNone(c.client.lost)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], reason)
        self.assertEqual(rejected["client"], "192.0.2.7:40001")
        self.assertEqual(rejected["log_level"], LogLevel.info)
        self.assertEqual(self.mtlsdEvents("accepted"), [])
        return c

    def test_noClientCertificate(self) -> None:
        """
        A client that presents no certificate: C{no client certificate}; the
        client learns that the server rejected it.
        """
        c = self.assertRejected(None, "no client certificate")
        error = describeClientFailure(
            c.client.lost,
            c.clientContext,
            None,
        )
        self.assertIsInstance(error, ServerRejectedClient)
        self.assertIn("rejected this client's certificate", str(error))

    def test_untrustedSelfSigned(self) -> None:
        """
        A self-signed certificate not in the bundle: OpenSSL's text.
        """
        c = self.assertRejected(selfSigned("mallory"), "self-signed certificate")
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual((rejected["depth"], rejected["subject"]), (0, "CN=mallory"))
        self.assertIsInstance(
            describeClientFailure(c.client.lost, c.clientContext, None),
            ServerRejectedClient,
        )

    def test_otherCA(self) -> None:
        """
        A certificate from a CA that is not trusted.
        """
        self.assertRejected(
            CertificateAuthority("Other CA").issue("eve"), "unable to get local issuer certificate"
        )

    def test_clientRefusesServer(self) -> None:
        """
        A client that does not trust the server's certificate sends an
        alert; the server logs it as the reason.
        """
        c = MemoryConnection(
            serverContext(self.server, [self.trusted.certificate]),
            clientContext(self.trusted, [CertificateAuthority("Other").certificate]),
        )
        c.flush()
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "client sent alert: tlsv1 alert unknown ca")

    def test_expired(self) -> None:
        """
        The server verifies the client certificate's expiration date: an
        expired certificate that is in the bundle is rejected.
        """
        expired = selfSigned("old", notBefore=hoursAgo(48), days=1)
        self.assertRejected(expired, "certificate has expired", trusted=[expired.certificate])

    def test_notYetValid(self) -> None:
        """
        A certificate in the bundle whose validity starts tomorrow is rejected.
        """
        future = selfSigned("future", notBefore=hoursAgo(-24))
        self.assertRejected(
            future,
            verifyErrorText(Codes.ERR_CERT_NOT_YET_VALID),
            trusted=[future.certificate],
        )

    def test_expiredCAIssued(self) -> None:
        """
        An expired leaf of a trusted CA is rejected.
        """
        old = self.ca.issue("old", notBefore=hoursAgo(48), days=1)
        self.assertRejected(old, "certificate has expired", trusted=[self.ca.certificate])

    def test_chainTooLong(self) -> None:
        """
        A client chain longer than the verify depth is rejected; the same
        chain within the depth is accepted.
        """
        from mtlsd._pki import makeCertificate, newKey
        from mtlsd.testing import Credentials

        issuer = (self.ca.certificate, self.ca.key)
        intermediates: list[x509.Certificate] = []
        for name in ("intermediate 1", "intermediate 2"):
            key = newKey()
            certificate = makeCertificate(name, key, issuer, isCA=True)
            intermediates.insert(0, certificate)
            issuer = (certificate, key)
        leafKey = newKey()
        leaf = makeCertificate("deep", leafKey, issuer, usages=(CLIENT_AUTH,))
        deep = Credentials(leaf, leafKey, intermediates)
        self.assertRejected(
            deep,
            verifyErrorText(Codes.ERR_CERT_CHAIN_TOO_LONG),
            trusted=[self.ca.certificate],
            verifyDepth=1,
        )
        accepted = MemoryConnection(
            serverContext(self.server, [self.ca.certificate], verifyDepth=2),
            clientContext(deep, [self.ca.certificate]),
        )
        accepted.flush()
        self.assertTrue(accepted.app.made)

    def test_unreadableCertificate(self) -> None:
        """
        A certificate OpenSSL accepts but cryptography cannot read (a 5-byte
        IP address in its subjectAltName) is turned away with its reason,
        not a traceback, and never reaches the application.
        """
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtensionOID, NameOID

        from mtlsd._pki import newKey
        from mtlsd.testing import Credentials

        key = newKey()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")])
        odd = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(hoursAgo(1))
            .not_valid_after(hoursAgo(-24))
            .add_extension(
                x509.UnrecognizedExtension(
                    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bytes.fromhex("30078705") + b"\1\2\3\4\5"
                ),
                critical=False,
            )
            .sign(self.ca.key, hashes.SHA256())
        )
        self.assertRejected(
            Credentials(odd, key),
            "unreadable client certificate: "
            + str(self.assertRaises(ValueError, lambda: odd.extensions)),
            trusted=[self.ca.certificate],
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_serverOnlyUsage(self) -> None:
        """
        A trusted certificate whose extended key usage excludes clientAuth is
        rejected with OpenSSL's reason.
        """
        serverOnly = selfSigned("server-only", usages=(SERVER_AUTH,))
        self.assertRejected(
            serverOnly,
            verifyErrorText(Codes.ERR_INVALID_PURPOSE),
            trusted=[serverOnly.certificate],
        )

    def buildRecorder(self) -> RecordingProtocol:
        self.built.append(RecordingProtocol())
        return self.built[-1]

    def connectRaw(self, clock: Clock | None = None):
        """
        Connect the server to a transport that records what it writes, with
        no TLS client on the other end.
        """
        factory = mtlsServerFactory(
            serverContext(self.server, [self.trusted.certificate]),
            Factory.forProtocol(self.buildRecorder),
            limits=ConnectionLimits(handshakeTimeout=5),
            clock=clock or Clock(),
        )
        protocol = factory.buildProtocol(CLIENT_ADDRESS)
        transport = StringTransportWithDisconnection(peerAddress=CLIENT_ADDRESS)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def test_noDelay(self) -> None:
        """
        Accepted TCP connections get TCP_NODELAY, so a small answer is not
        held back by Nagle's algorithm (the benchmark measured 47 ms to the
        first relayed byte without it).
        """
        calls: list[bool] = []
        transport = StringTransportWithDisconnection(peerAddress=CLIENT_ADDRESS)
        transport.setTcpNoDelay = calls.append  # type: ignore[attr-defined]
        factory = mtlsServerFactory(
            serverContext(self.server, [self.trusted.certificate]), Factory(), clock=Clock()
        )
        protocol = factory.buildProtocol(CLIENT_ADDRESS)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertEqual(calls, [True])

    def test_handshakeTimeout(self) -> None:
        """
        A client that connects and never sends a ClientHello is cut after the
        handshake timeout and logged as such.
        """
        clock = Clock()
        protocol, transport = self.connectRaw(clock)
        clock.advance(4.9)
        self.assertTrue(transport.connected)
        clock.advance(0.2)
        self.assertFalse(transport.connected)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "handshake timeout")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_notTLS(self) -> None:
        """
        An HTTP request or random bytes instead of a ClientHello: C{not TLS},
        and the application never starts.
        """
        for garbage in [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256))]:
            protocol, transport = self.connectRaw()
            protocol.dataReceived(garbage)
            self.assertFalse(transport.connected)
        self.assertEqual(
            [e["reason"] for e in self.mtlsdEvents("rejected")], ["not TLS", "not TLS"]
        )
        self.assertEqual(self.built, [])

    def test_closedBeforeHandshake(self) -> None:
        """
        A client that connects and closes without a byte (a TCP health check)
        is logged as C{closed before handshake}.
        """
        protocol, transport = self.connectRaw()
        transport.loseConnection()
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "closed before handshake")


class VerifyErrorTextTests(SynchronousTestCase):
    """
    L{verifyErrorText} gives OpenSSL's own texts.
    """

    def test_texts(self) -> None:
        """
        The codes mtlsd's README and logs quote have OpenSSL's texts.
        """
        self.assertEqual(verifyErrorText(Codes.ERR_CERT_HAS_EXPIRED), "certificate has expired")
        self.assertEqual(
            verifyErrorText(Codes.ERR_DEPTH_ZERO_SELF_SIGNED_CERT),
            "self-signed certificate",
        )
        self.assertEqual(
            verifyErrorText(Codes.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
            "unable to get local issuer certificate",
        )


def recipeCertificate(commonName: str, issuer=None):
    """
    A certificate as C{openssl req -x509} makes it (the classic recipe's):
    C{basicConstraints CA:TRUE}, no keyUsage; self-signed, or signed with
    C{issuer}'s key.
    """
    key = newKey()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, commonName)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.certificate.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer.key if issuer else key, hashes.SHA256())
    )
    return Credentials(certificate, key)


class IssuerTests(_LoggingTestCase):
    """
    A certificate of the bundle admits itself; what its key signs only if it
    is a CA by intent, or given as a client CA.
    """

    def setUp(self) -> None:
        super().setUp()
        self.ca = CertificateAuthority()
        self.server = self.ca.server()
        self.client1 = recipeCertificate("client1")
        self.mallory = recipeCertificate("mallory", issuer=self.client1)

    def connect(self, client, trusted, **kw: Any) -> MemoryConnection:
        c = MemoryConnection(
            serverContext(self.server, trusted, **kw),
            clientContext(client, [self.ca.certificate]),
        )
        c.flush()
        return c

    def test_clientCertificateCannotIssue(self) -> None:
        """
        A certificate signed with a listed client certificate's key is
        refused during the handshake: the client gets an "unknown CA" alert
        (L{ServerRejectedClient}), the log names the issuer's depth and
        subject.  The listed certificate itself gets in.
        """
        self.assertTrue(self.connect(self.client1, [self.client1.certificate]).app.made)
        c = self.connect(self.mallory, [self.client1.certificate])
        self.assertFalse(c.app.made)
        self.assertIsInstance(c.client.lost.value, ServerRejectedClient)
        self.assertIn("unknown ca", str(c.client.lost.value))
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(
            (rejected["reason"], rejected["depth"], rejected["subject"]),
            ("issuer is a client certificate, not a CA", 1, "CN=client1"),
        )

    def test_clientCA(self) -> None:
        """
        The same certificate given as a client CA admits what it signs.
        """
        c = self.connect(self.mallory, [], clientCAs=(self.client1.certificate,))
        self.assertTrue(c.app.made)
        self.assertEqual(peerIdentity(c.app.transport).commonName, "mallory")

    def test_realCA(self) -> None:
        """
        A CA by intent (keyCertSign) in the bundle admits its clients; the
        settings say which certificates issue and which only admit themselves.
        """
        alice = self.ca.issue("alice")
        self.assertTrue(self.connect(alice, [self.ca.certificate]).app.made)
        settings = ServerTLSSettings(
            self.server.certificate,
            self.server.key,
            trusted=(self.ca.certificate, self.client1.certificate),
        )
        self.assertEqual(settings.issuers, (self.ca.certificate,))
        self.assertEqual(
            settings.nonIssuers,
            {self.client1.certificate.public_bytes(serialization.Encoding.DER)},
        )
        self.assertTrue(isIssuingCA(self.ca.certificate))
        self.assertFalse(isIssuingCA(self.client1.certificate))

    def test_reloadRecheck(self) -> None:
        """
        The re-check of live sessions applies the same rule.
        """
        context = serverContext(self.server, [], clientCAs=(self.client1.certificate,))
        self.assertIsNone(context.admission.decide(self.mallory.certificate, ()))
        context.update(
            ServerTLSSettings(
                self.server.certificate, self.server.key, trusted=(self.client1.certificate,)
            )
        )
        self.assertEqual(
            getattr(context.admission.decide(self.mallory.certificate, ()), "reason", None),
            "issuer is a client certificate, not a CA",
        )


class PolicyInHandshakeTests(_LoggingTestCase):
    def test_policyRefusalIsAnAlert(self) -> None:
        """
        A client the allow-list refuses gets a "bad certificate" alert in
        the handshake (the client sees L{ServerRejectedClient}); the event
        names it with what allow-list entries match, SPKI included, and the
        text line says so.
        """
        ca = CertificateAuthority()
        carol = ca.issue("carol", uris=["spiffe://example.org/carol"])
        c = MemoryConnection(
            serverContext(ca.server(), [ca.certificate], policy=AllowPolicy(commonNames=["alice"])),
            clientContext(carol, [ca.certificate]),
        )
        c.flush()
        self.assertFalse(c.app.made)
        self.assertIsInstance(c.client.lost.value, ServerRejectedClient)
        self.assertIn("bad certificate", str(c.client.lost.value))
        [rejected] = self.mtlsdEvents("rejected")
        identity = identityFromCertificate(carol.certificate)
        self.assertEqual(rejected["spkiFingerprint"], identity.spkiFingerprint)
        self.assertEqual(rejected["uris"], ("spiffe://example.org/carol",))
        # Whatever kinds the allow-list has, the refused client is named by each.
        for kind in ALLOW_KINDS:
            self.assertEqual(rejected[kind.identity], getattr(identity, kind.identity), kind)
        self.assertEqual(
            formatEvent(rejected),
            f"rejected 192.0.2.7:40001: not allowed by policy: CN=carol"
            f" sha256={identity.fingerprint} spki={identity.spkiFingerprint}"
            " uri=spiffe://example.org/carol",
        )

    def test_certificateErrorText(self) -> None:
        """
        A certificate error's text line gives the depth and subject.
        """
        ca = CertificateAuthority()
        c = MemoryConnection(
            serverContext(ca.server(), [ca.certificate]),
            clientContext(selfSigned("eve"), [ca.certificate]),
        )
        c.flush()
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(
            formatEvent(rejected),
            "rejected 192.0.2.7:40001: self-signed certificate (depth 0, CN=eve)",
        )


class SignatureAlgorithmsTests(SynchronousTestCase):
    def test_serverMustStillSign(self) -> None:
        """
        A C{--tls-sigalgs} list the server's own key cannot sign with (in a
        TLS version it offers) is refused with one line naming the
        versions: OpenSSL would otherwise refuse every client, or quietly
        offer TLS 1.2 only.  A list it can use is taken.
        """
        ca = CertificateAuthority()  # P-256 keys
        for algorithms, versions in [
            ("rsa_pss_rsae_sha256", "TLS 1.2 and 1.3"),
            ("ECDSA+SHA384", "TLS 1.3"),
        ]:
            with self.assertRaises(ConfigurationError) as raised:
                serverContext(ca.server(), [ca.certificate], signatureAlgorithms=algorithms)
            self.assertIn(
                f"--tls-sigalgs {algorithms}: the server's own key cannot sign with any of these"
                f" in {versions}",
                str(raised.exception),
            )
        context = serverContext(
            ca.server(), [ca.certificate], signatureAlgorithms="ECDSA+SHA384:ECDSA+SHA256"
        )
        self.assertTrue(
            MemoryConnection(context, clientContext(ca.issue("alice"), [ca.certificate])).app.made
        )
        with self.assertRaises(ConfigurationError):
            serverContext(
                ca.server(), [ca.certificate], signatureAlgorithms="ECDSA+SHA384",
                minimumTLSVersion="1.3",
            )  # fmt: skip


class PyOpenSSLNamesTests(SynchronousTestCase):
    def test_bindingsStillThere(self) -> None:
        """
        The names of pyOpenSSL's bindings that L{mtlsd._verify} uses exist.
        """
        from OpenSSL import SSL
        from OpenSSL._util import ffi, lib

        context = SSL.Context(SSL.TLS_METHOD)
        context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
        self.assertIsNotNone(context._verify_callback)
        self.assertIsNotNone(context._context)
        self.assertTrue(callable(lib.X509_STORE_CTX_set_error))
        self.assertTrue(callable(lib.SSL_CTX_set_verify))
        self.assertTrue(callable(ffi.callback))
        self.assertTrue(callable(lib.SSL_CTX_set1_curves_list))  # SSL_CTX_set1_groups_list
        self.assertTrue(callable(lib.SSL_CTX_set1_sigalgs_list))

    def test_noTicketKeys(self) -> None:
        """
        pyOpenSSL's bindings (cryptography's, with OpenSSL linked in and its
        symbols hidden) cannot set session ticket keys: neither C{SSL_CTX_ctrl}
        (for C{SSL_CTRL_SET_TLSEXT_TICKET_KEYS}) nor a ticket key callback
        nor an external session cache is bound, so session tickets cannot
        be shared between processes (README, "Session resumption").  When
        this fails, they can: build C{--session-ticket-key-file}.
        """
        from OpenSSL._util import lib

        for name in (
            "SSL_CTX_ctrl",
            "SSL_CTX_set_tlsext_ticket_keys",
            "SSL_CTX_set_tlsext_ticket_key_cb",
            "SSL_CTX_set_tlsext_ticket_key_evp_cb",
            "SSL_CTX_sess_set_new_cb",
            "SSL_CTX_sess_set_get_cb",
            "SSL_CTX_add_session",
        ):
            self.assertFalse(hasattr(lib, name), name)


class AcceptedTextTests(_LoggingTestCase):
    def test_urisInAcceptedLine(self) -> None:
        """
        The C{accepted} line adds the client's URI SANs (SPIFFE IDs), when it
        has any.
        """
        ca = CertificateAuthority()
        workload = ca.issue("w", uris=["spiffe://example.org/a", "spiffe://example.org/b"])
        MemoryConnection(
            serverContext(ca.server(), [ca.certificate]), clientContext(workload, [ca.certificate])
        ).flush()
        MemoryConnection(
            serverContext(ca.server(), [ca.certificate]),
            clientContext(ca.issue("plain"), [ca.certificate]),
        ).flush()
        withURIs, plain = (formatEvent(e) for e in self.mtlsdEvents("accepted"))
        self.assertTrue(
            withURIs.endswith(" uri=spiffe://example.org/a uri=spiffe://example.org/b"), withURIs
        )
        self.assertRegex(plain, r"serial=[0-9a-f]+$")
