"""
Tests for L{mtlsd.testing}, used as a program embedding mtlsd uses it: only
public names of L{mtlsd} and L{mtlsd.testing}.
"""

from __future__ import annotations

import datetime
import inspect
import os

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

import mtlsd.testing
from mtlsd import (
    AllowPolicy,
    ServerNotTrusted,
    ServerRejectedClient,
    ServerTLSSettings,
    peerIdentity,
)
from mtlsd.testing import (
    CertificateAuthority,
    Credentials,
    MemoryConnection,
    RecordingProtocol,
    clientContext,
    selfSigned,
    serverContext,
)


class Greeter(Protocol):
    """
    Greets each client by the name in its certificate, then closes.
    """

    def connectionMade(self) -> None:
        peer = peerIdentity(self.transport)
        self.transport.write(f"hello, {peer.commonName}\n".encode())  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class Collector(RecordingProtocol):
    """
    A client protocol of the test's own.
    """


def ago(**delta: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(**delta)


class MemoryConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.server = serverContext(self.ca.server(), [self.ca.certificate])

    def greet(self, client: Credentials | None, **kw: object) -> MemoryConnection:
        return MemoryConnection(
            self.server,
            clientContext(client, [self.ca.certificate]),
            Factory.forProtocol(Greeter),
            **kw,  # type: ignore[arg-type]
        )

    def test_greeter(self) -> None:
        """
        A protocol run through L{MemoryConnection} starts after the
        handshake, reads the client's identity from its transport, and its
        words reach the client, which sees a clean close.
        """
        c = self.greet(self.ca.issue("alice"))
        self.assertIsInstance(c.app, Greeter)
        self.assertEqual(c.client.received, b"hello, alice\n")
        self.assertTrue(c.client.handshook)
        c.client.lost.trap(ConnectionDone)

    def test_untrustedClientRefused(self) -> None:
        """
        A client whose certificate the server does not trust never reaches
        the application; the client is told the server rejected it.
        """
        c = self.greet(selfSigned("mallory"))
        self.assertIsNone(c.app)
        self.assertEqual(c.client.received, b"")
        self.assertIsInstance(c.client.lost.value, ServerRejectedClient)
        self.assertIn("rejected this client's certificate", str(c.client.lost.value))

    def test_noClientCertificate(self) -> None:
        """
        A client without a certificate is refused too.
        """
        c = self.greet(None)
        self.assertIsNone(c.app)
        self.assertIsInstance(c.client.lost.value, ServerRejectedClient)

    def test_untrustedServer(self) -> None:
        """
        A client that does not trust the server's certificate is told so.
        """
        c = MemoryConnection(
            self.server, clientContext(self.ca.issue("alice"), [CertificateAuthority().certificate])
        )
        self.assertFalse(c.app.made)
        self.assertIsInstance(c.client.lost.value, ServerNotTrusted)

    def test_twistedClient(self) -> None:
        """
        With C{twistedClient}, the client is Twisted's own TLS client: its
        protocol is told OpenSSL's error, not L{ServerRejectedClient}.
        """
        c = self.greet(selfSigned("mallory"), twistedClient=True)
        self.assertIsNone(c.app)
        self.assertIsNotNone(c.client.lost)
        self.assertNotIsInstance(c.client.lost.value, ServerRejectedClient)

    def test_defaults(self) -> None:
        """
        Without factories both ends are L{RecordingProtocol}s; the server's
        is made in advance, so that it says whether the client got in.
        """
        admitted = MemoryConnection(
            self.server, clientContext(self.ca.issue("alice"), [self.ca.certificate])
        )
        refused = MemoryConnection(
            self.server, clientContext(selfSigned("eve"), [self.ca.certificate])
        )
        self.assertTrue(admitted.app.made)
        self.assertFalse(refused.app.made)
        admitted.clientTLS.write(b"ping")
        admitted.flush()
        self.assertEqual(admitted.app.received, b"ping")
        admitted.app.transport.write(b"pong")
        admitted.flush()
        self.assertEqual(admitted.client.received, b"pong")
        self.assertIsInstance(admitted.client, RecordingProtocol)

    def test_clientFactory(self) -> None:
        """
        The client's protocol is the one C{clientFactory} builds; the
        client's OpenSSL connection is kept after the connection is lost.
        """
        c = self.greet(self.ca.issue("alice"), clientFactory=Factory.forProtocol(Collector))
        self.assertIsInstance(c.client, Collector)
        self.assertEqual(c.client.received, b"hello, alice\n")
        self.assertIsNotNone(c.client.lost)
        self.assertEqual(c.clientConnection.get_protocol_version_name(), "TLSv1.3")

    def test_addresses(self) -> None:
        """
        The server's application sees the client's address, and the
        client the server's.
        """
        from twisted.internet.address import IPv4Address

        client = IPv4Address("TCP", "198.51.100.4", 5555)
        c = MemoryConnection(
            self.server,
            clientContext(self.ca.issue("alice"), [self.ca.certificate]),
            clientAddress=client,
        )
        self.assertEqual(c.app.transport.getPeer(), client)
        self.assertEqual(c.clientTLS.getPeer(), IPv4Address("TCP", "127.0.0.1", 8082))

    def test_handshakeTimeout(self) -> None:
        """
        Without greeting, nothing moves until L{MemoryConnection.flush}:
        advancing the clock past the handshake timeout closes the connection
        before the application starts.
        """
        c = self.greet(self.ca.issue("alice"), greet=False)
        c.clock.advance(11)
        c.flush()
        self.assertIsNone(c.app)
        self.assertIsNotNone(c.client.lost)

    def test_policy(self) -> None:
        """
        L{serverContext} takes the other settings by name: an allow-list
        turns away a trusted client it does not name.
        """
        server = serverContext(
            self.ca.server(), [self.ca.certificate], policy=AllowPolicy(commonNames=["alice"])
        )
        for name, admitted in [("alice", True), ("bob", False)]:
            c = MemoryConnection(server, clientContext(self.ca.issue(name), [self.ca.certificate]))
            self.assertEqual(c.app.made, admitted, name)


class CertificateAuthorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority()

    def admitted(self, client: Credentials, trusted: list[x509.Certificate] | None = None) -> bool:
        c = MemoryConnection(
            serverContext(self.ca.server(), trusted or [self.ca.certificate]),
            clientContext(client, [self.ca.certificate]),
        )
        return bool(c.app.made)

    def test_subjectAltNames(self) -> None:
        """
        The names given to L{CertificateAuthority.issue} are in the
        certificate: DNS names, IP addresses, URIs, e-mail addresses and an
        OU, as the server's application reads them.
        """
        alice = self.ca.issue(
            "alice",
            names=["alice.example", "192.0.2.1", "2001:db8::1"],
            uris=["spiffe://example.org/alice"],
            emails=["alice@example.org"],
            organizationalUnit="ops",
        )
        c = MemoryConnection(
            serverContext(self.ca.server(), [self.ca.certificate]),
            clientContext(alice, [self.ca.certificate]),
        )
        identity = peerIdentity(c.app.transport)
        self.assertEqual(identity.commonName, "alice")
        self.assertEqual(identity.dnsNames, ("alice.example",))
        self.assertEqual(identity.ipAddresses, ("192.0.2.1", "2001:db8::1"))
        self.assertEqual(identity.uris, ("spiffe://example.org/alice",))
        self.assertEqual(identity.emails, ("alice@example.org",))
        self.assertEqual(identity.organizationalUnits, ("ops",))
        self.assertEqual(identity.issuer, "CN=Test CA")

    def test_serverNames(self) -> None:
        """
        L{CertificateAuthority.server} issues a certificate the client
        verifies under each of its names, and not under another.
        """
        server = self.ca.server(names=["db.example", "127.0.0.1"])
        alice = self.ca.issue("alice")
        for hostname, trusted in [("db.example", True), ("127.0.0.1", True), ("other", False)]:
            c = MemoryConnection(
                serverContext(server, [self.ca.certificate]),
                clientContext(alice, [self.ca.certificate], hostname),
            )
            self.assertEqual(c.app.made, trusted, hostname)

    def test_validity(self) -> None:
        """
        C{notBefore} and C{days} make certificates that have expired or are
        not valid yet; the server refuses both.
        """
        self.assertTrue(self.admitted(self.ca.issue("now")))
        self.assertFalse(self.admitted(self.ca.issue("old", notBefore=ago(days=3), days=1)))
        self.assertFalse(self.admitted(self.ca.issue("early", notBefore=ago(days=-1))))

    def test_usages(self) -> None:
        """
        A client certificate has extended key usage clientAuth (refused when
        it has only serverAuth); a server certificate serverAuth.
        """
        eku = ExtendedKeyUsageOID
        usages = self.ca.server().certificate.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        )
        self.assertEqual(list(usages.value), [eku.SERVER_AUTH])
        self.assertTrue(
            self.admitted(self.ca.issue("both", usages=[eku.CLIENT_AUTH, eku.SERVER_AUTH]))
        )
        self.assertTrue(self.admitted(self.ca.issue("none", usages=())))
        self.assertFalse(self.admitted(self.ca.issue("server", usages=[eku.SERVER_AUTH])))

    def test_selfSigned(self) -> None:
        """
        A self-signed certificate is admitted when trusted itself (pinned),
        and not otherwise.
        """
        pinned = selfSigned("pinned")
        self.assertEqual(pinned.certificate.issuer, pinned.certificate.subject)
        self.assertTrue(self.admitted(pinned, [pinned.certificate]))
        self.assertFalse(self.admitted(pinned))

    def test_chain(self) -> None:
        """
        L{Credentials} can carry intermediates: a client certificate issued
        by an intermediate CA is admitted with its chain.
        """
        from mtlsd._pki import makeCertificate, newKey

        key = newKey()
        intermediate = makeCertificate(
            "Intermediate", key, (self.ca.certificate, self.ca.key), isCA=True
        )
        leafKey = newKey()
        leaf = makeCertificate(
            "frank",
            leafKey,
            (intermediate, key),
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        self.assertTrue(self.admitted(Credentials(leaf, leafKey, [intermediate])))
        self.assertFalse(self.admitted(Credentials(leaf, leafKey)))

    def test_pemFiles(self) -> None:
        """
        L{Credentials.certificatePEM} and L{Credentials.keyPEM} write files
        that L{ServerTLSSettings.fromFiles} reads.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        server, alice = self.ca.server(), self.ca.issue("alice")
        paths = {}
        for name, data in [
            ("server.crt", server.certificatePEM()),
            ("server.key", server.keyPEM()),
            ("clients.pem", alice.certificatePEM()),
        ]:
            paths[name] = os.path.join(directory, name)
            with open(paths[name], "wb") as f:
                f.write(data)
        os.chmod(paths["server.key"], 0o600)
        settings = ServerTLSSettings.fromFiles(
            paths["server.crt"], paths["server.key"], [paths["clients.pem"]]
        )
        self.assertEqual(settings.certificate, server.certificate)
        self.assertEqual(settings.trusted, (alice.certificate,))


class DocumentationTests(SynchronousTestCase):
    def test_publicNamesDocumented(self) -> None:
        """
        Every name of C{mtlsd.testing.__all__} is defined there and has a
        docstring, and so has each of its public methods and properties.
        """
        for name in mtlsd.testing.__all__:
            value = getattr(mtlsd.testing, name)
            self.assertEqual(value.__module__, "mtlsd.testing", name)
            self.assertTrue(inspect.getdoc(value), name)
            if inspect.isclass(value):
                for member, attribute in vars(value).items():
                    if member.startswith("_") and member != "__init__":
                        continue
                    if callable(attribute) or isinstance(attribute, property):
                        self.assertTrue(attribute.__doc__, f"{name}.{member}")
