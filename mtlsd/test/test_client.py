"""
Tests for L{mtlsd._client}: the client verifies the server's chain and name,
fails closed, and explains every failure.
"""

from typing import Any

from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mtlsd import ServerNotTrusted, ServerRejectedClient
from mtlsd._client import RIGHT_AFTER_HANDSHAKE, describeClientFailure
from mtlsd._errors import ConfigurationError
from mtlsd._verify import MOZILLA_GROUPS, tlsGroups
from mtlsd.testing import (
    CertificateAuthority,
    MemoryConnection,
    clientContext,
    selfSigned,
    serverContext,
)


class ClientTests(SynchronousTestCase):
    """
    What the client accepts, and the sentence it gives when it does not.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.client = selfSigned("alice")

    def connect(self, server, hostname="localhost", trusted=None) -> MemoryConnection:
        c = MemoryConnection(
            serverContext(server, [self.client.certificate]),
            clientContext(self.client, trusted or [self.ca.certificate], hostname),
            twistedClient=True,
        )
        c.flush()
        return c

    def failure(self, c: MemoryConnection) -> Exception | None:
        self.assertIsNotNone(c.client.lost)
        return describeClientFailure(
            c.client.lost,
            c.clientContext,
            c.clientConnection,
        )

    def test_verifiesDNSAndIP(self) -> None:
        """
        A server certificate with DNS and IP SANs is accepted under either
        name.
        """
        server = self.ca.server(names=("localhost", "127.0.0.1", "::1"))
        for name in ("localhost", "127.0.0.1", "::1"):
            c = self.connect(server, name)
            self.assertTrue(c.app.made, name)
            self.assertIsNone(c.client.lost)

    def test_noSubjectAltName(self) -> None:
        """
        A server certificate with a CN and no subjectAltName (as the classic
        recipe makes it) fails the handshake, with a sentence that says how
        to fix it.  Twisted's own client lets it through.
        """
        recipe = selfSigned("example.com", usages=())
        c = self.connect(recipe, "example.com", trusted=[recipe.certificate])
        self.assertFalse(c.client.handshook)
        self.assertFalse(c.app.made)
        error = self.failure(c)
        self.assertIsInstance(error, ServerNotTrusted)
        self.assertIn("no subjectAltName", str(error))
        self.assertIn("-addext subjectAltName=DNS:example.com", str(error))

    def test_nameMismatch(self) -> None:
        """
        A server certificate for other names is refused, naming the name.
        """
        c = self.connect(self.ca.server(names=("localhost",)), "example.test")
        self.assertFalse(c.app.made)
        error = self.failure(c)
        self.assertIsInstance(error, ServerNotTrusted)
        self.assertIn("not valid for example.test", str(error))

    def test_ipMismatch(self) -> None:
        """
        A DNS-only server certificate does not match an IP address.
        """
        c = self.connect(self.ca.server(names=("localhost",)), "127.0.0.1")
        self.assertFalse(c.app.made)
        self.assertIn("not valid for 127.0.0.1", str(self.failure(c)))

    def test_untrustedServer(self) -> None:
        """
        A server whose certificate does not chain to the client's CAs is
        refused with OpenSSL's reason.
        """
        c = self.connect(CertificateAuthority("Other").server())
        self.assertFalse(c.app.made)
        error = self.failure(c)
        self.assertIsInstance(error, ServerNotTrusted)
        self.assertIn("unable to get local issuer certificate", str(error))

    def test_expiredServer(self) -> None:
        """
        An expired server certificate is refused with OpenSSL's reason.
        """
        from mtlsd.test.helpers import hoursAgo

        c = self.connect(self.ca.server(notBefore=hoursAgo(48), days=1))
        self.assertIn("certificate has expired", str(self.failure(c)))

    def test_rejectedAfterHandshake(self) -> None:
        """
        With TLS 1.3 the client's handshake completes before the server has
        checked the client certificate; the server's alert then becomes
        L{ServerRejectedClient}, not a clean close.
        """
        stranger = selfSigned("stranger")
        c = MemoryConnection(
            serverContext(self.ca.server(), [self.client.certificate]),
            clientContext(stranger, [self.ca.certificate]),
            twistedClient=True,
        )
        c.flush()
        self.assertTrue(c.client.handshook)
        error = self.failure(c)
        self.assertIsInstance(error, ServerRejectedClient)
        self.assertIn("rejected this client's certificate", str(error))
        self.assertEqual(c.clientConnection.get_protocol_version_name(), "TLSv1.3")

    def test_serverCertificateWithClientUsageOnly(self) -> None:
        """
        A server certificate whose EKU is clientAuth only is refused.
        """
        server = self.ca.issue("localhost", names=("localhost",))
        c = self.connect(server)
        self.assertIsInstance(self.failure(c), ServerNotTrusted)


class GateTests(SynchronousTestCase):
    """
    Behind L{MtlsClientEndpoint}, the application protocol gets mtlsd's
    errors in C{connectionLost}.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.client = selfSigned("alice")

    def connect(self, client, hostname: str = "localhost") -> MemoryConnection:
        c = MemoryConnection(
            serverContext(self.ca.server(), [self.client.certificate]),
            clientContext(client, [self.ca.certificate], hostname),
        )
        c.flush()
        return c

    def test_rejectedClient(self) -> None:
        """
        The server's alert after a TLS 1.3 handshake arrives as
        L{ServerRejectedClient}.
        """
        c = self.connect(selfSigned("stranger"))
        self.assertTrue(c.client.handshook)
        self.assertIsNotNone(c.client.lost)
        c.client.lost.trap(ServerRejectedClient)

    def test_untrustedServer(self) -> None:
        """
        A server certificate for another name arrives as L{ServerNotTrusted}.
        """
        c = self.connect(self.client, "example.test")
        self.assertFalse(c.client.handshook)
        c.client.lost.trap(ServerNotTrusted)

    def test_serverRefusalSendsAlert(self) -> None:
        """
        A server certificate refused for its name (for other names, or its
        name in the CN alone) or its chain ends the handshake with a fatal
        alert, so that the server logs why (C{client sent alert: ...}), not
        C{closed before handshake}; the client's sentence is the same as
        without the alert.
        """
        events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )
        recipe = selfSigned("example.com", usages=())
        for server, trusted, hostname, sentence, alert in [
            (
                self.ca.server(names=("localhost",)),
                self.ca.certificate,
                "example.test",
                "the server certificate is not valid for example.test; use --servername"
                " with one of its names (mtlsd inspect shows them), or reissue it",
                "bad certificate",
            ),
            (
                self.ca.server(names=("localhost",)),
                self.ca.certificate,
                "127.0.0.1",
                "the server certificate is not valid for 127.0.0.1; use --servername"
                " with one of its names (mtlsd inspect shows them), or reissue it",
                "bad certificate",
            ),
            (
                recipe,
                recipe.certificate,
                "example.com",
                "the server certificate has no subjectAltName, so it cannot be verified as"
                " example.com (a name in the CN alone does not count); regenerate it with"
                " -addext subjectAltName=DNS:example.com",
                "bad certificate",
            ),
            (
                CertificateAuthority("Other").server(),
                self.ca.certificate,
                "localhost",
                "the server certificate failed verification: unable to get local issuer"
                " certificate (depth 0, CN=localhost)",
                "unknown ca",
            ),
        ]:
            seen = len(events)
            c = MemoryConnection(
                serverContext(server, [self.client.certificate]),
                clientContext(self.client, [trusted], hostname),
            )
            c.flush()
            self.assertFalse(c.client.handshook)
            self.assertIsInstance(c.client.lost.value, ServerNotTrusted)
            self.assertEqual(str(c.client.lost.value), sentence)
            [rejected] = [e for e in list(events)[seen:] if e.get("mtlsdEvent") == "rejected"]
            self.assertTrue(rejected["reason"].startswith("client sent alert: "), rejected)
            self.assertIn(alert, rejected["reason"])

    def test_cleanClose(self) -> None:
        """
        An accepted client sees the data and a clean close.
        """
        from twisted.internet.error import ConnectionDone

        c = self.connect(self.client)
        c.clientTLS.write(b"hi")
        c.flush()
        self.assertEqual(c.app.received, b"hi")
        c.clientTLS.loseConnection()
        c.flush()
        c.client.lost.trap(ConnectionDone)

    def test_dropAfterHandshake(self) -> None:
        """
        A connection lost without close_notify or alert within
        L{RIGHT_AFTER_HANDSHAKE} seconds of the handshake, before any data,
        is a server that may not accept this client's certificate or could
        not serve the connection; later, or once data came, it is a close
        without an alert, not blamed on the certificate; a connection the
        client aborted itself, or lost before the handshake, is neither.
        """
        context = clientContext(self.client, [self.ca.certificate])
        rightAfter = (
            "the server closed the connection without an alert right after the handshake,"
            " before sending anything (it may not accept this client's certificate, or could"
            " not serve the connection: see its log)"
        )
        later = "the server closed the connection without an alert (see its log)"
        for reason, sinceHandshake, received, expected in [
            (ConnectionLost(), 0.0, False, rightAfter),
            (ConnectionLost(), RIGHT_AFTER_HANDSHAKE - 0.01, False, rightAfter),
            (ConnectionLost(), RIGHT_AFTER_HANDSHAKE, False, later),
            (ConnectionLost(), 1.8, False, later),
            (ConnectionLost(), 0.0, True, later),
            (ConnectionAborted(), 0.0, False, None),
            (ConnectionLost(), None, False, None),
        ]:
            error = describeClientFailure(
                Failure(reason), context, None, sinceHandshake=sinceHandshake, received=received
            )
            case = (reason, sinceHandshake, received)
            self.assertIsNotNone(error, case)
            if expected is None:
                self.assertNotIn("without an alert", str(error), case)
            else:
                self.assertEqual(str(error), expected, case)
            self.assertEqual(isinstance(error, ServerRejectedClient), expected == rightAfter, case)

    def test_silentCloseTimedByClock(self) -> None:
        """
        Behind the gate, the time from the handshake to the loss is measured
        with the reactor's clock: a server that drops the connection without
        an alert or close_notify 0.5 seconds after the handshake may not
        accept the certificate; 1.8 seconds after (as mtlsd cuts a client
        whose trust was reloaded away), it just closed without an alert.
        """
        for delay, expected in [
            (0.5, "without an alert right after the handshake, before sending anything"),
            (1.8, "the server closed the connection without an alert (see its log)"),
        ]:
            c = MemoryConnection(
                serverContext(self.ca.server(), [self.client.certificate]),
                clientContext(self.client, [self.ca.certificate]),
                clock=Clock(),
            )
            c.flush()
            self.assertTrue(c.client.handshook)
            c.clock.advance(delay)
            # The server's TCP connection ends, under its TLS layer.
            c.serverTLS.transport.loseConnection()  # type: ignore[union-attr]
            c.flush()
            self.assertIsNotNone(c.client.lost)
            self.assertIn(expected, str(c.client.lost.value), delay)
            self.assertEqual(
                isinstance(c.client.lost.value, ServerRejectedClient), delay < 1, delay
            )


class PinnedServerTests(SynchronousTestCase):
    """
    The client trusts a server certificate listed alone, self-signed (the
    recipe's C{cafile=server.crt}) or CA-issued (partial chain).
    """

    def test_pinned(self) -> None:
        """
        A pinned server certificate is trusted without its CA; another
        certificate of the same CA is not.
        """
        ca = CertificateAuthority()
        client = selfSigned("alice")
        server, other = ca.server(), ca.server()
        for pinned, expectTrusted in [(server, True), (other, False)]:
            c = MemoryConnection(
                serverContext(server, [client.certificate]),
                clientContext(client, [pinned.certificate]),
            )
            c.flush()
            self.assertEqual(c.app.made, expectTrusted)
        recipe = selfSigned("localhost", usages=(), names=("localhost",))
        c = MemoryConnection(
            serverContext(recipe, [client.certificate]), clientContext(client, [recipe.certificate])
        )
        c.flush()
        self.assertTrue(c.app.made)


class MinimumVersionTests(SynchronousTestCase):
    def test_clientFloor(self) -> None:
        """
        A client with C{minimumTLSVersion="1.3"} refuses a TLS 1.2 server.
        """
        import attrs
        from OpenSSL import SSL

        ca = CertificateAuthority()
        client = selfSigned("alice")
        for minimum, connects in [("1.2", True), ("1.3", False)]:
            server = serverContext(ca.server(), [client.certificate])
            server._options.getContext().set_max_proto_version(SSL.TLS1_2_VERSION)
            settings = attrs.evolve(
                clientContext(client, [ca.certificate]).settings, minimumTLSVersion=minimum
            )
            c = MemoryConnection(server, settings.connectionCreator("localhost"))
            c.flush()
            self.assertEqual(c.app.made, connects, minimum)


class GroupsTests(SynchronousTestCase):
    """
    The key-exchange groups both sides offer (C{--tls-groups}).
    """

    def connect(
        self, serverGroups: tuple[str, ...] | None, clientGroups: tuple[str, ...] | None
    ) -> MemoryConnection:
        import attrs

        ca = CertificateAuthority()
        client = ca.issue("alice")
        chosen: dict[str, Any] = {} if serverGroups is None else {"groups": serverGroups}
        server = serverContext(ca.server(), [ca.certificate], **chosen)
        settings = clientContext(client, [ca.certificate]).settings
        if clientGroups is not None:
            settings = attrs.evolve(settings, groups=clientGroups)
        c = MemoryConnection(server, settings.connectionCreator("localhost"))
        c.flush()
        return c

    def negotiated(self, c: MemoryConnection) -> str:
        from OpenSSL._util import ffi, lib

        return str(ffi.string(lib.SSL_get0_group_name(c.clientConnection._ssl)).decode())

    def test_mozillaByDefault(self) -> None:
        """
        By default both sides offer Mozilla's groups, and agree on the first,
        X25519MLKEM768 (hybrid post-quantum); a client offering only X448 or
        P-521 is refused, as is a server limited to them.
        """
        self.assertEqual(tlsGroups(None), MOZILLA_GROUPS)
        c = self.connect(None, None)
        self.assertTrue(c.app.made)
        self.assertEqual(self.negotiated(c), "X25519MLKEM768")
        for only in ("X448", "secp521r1"):
            self.assertFalse(self.connect(None, (only,)).app.made, only)
            self.assertFalse(self.connect((only,), None).app.made, only)

    def test_chosen(self) -> None:
        """
        Chosen groups are offered in their order: the server's choice among
        the client's.
        """
        c = self.connect(("secp384r1", "X25519"), None)
        self.assertEqual(self.negotiated(c), "secp384r1")
        c = self.connect(None, ("prime256v1",))
        self.assertEqual(self.negotiated(c), "secp256r1")  # OpenSSL's other name

    def test_lacking(self) -> None:
        """
        A default group this OpenSSL lacks is dropped (and named by
        L{lackingGroups}); a chosen one is an error naming it.
        """
        import mtlsd._verify as verify

        self.patch(verify, "MOZILLA_GROUPS", ("X25519", "MLKEM9999"))
        self.assertEqual(verify.tlsGroups(None), ("X25519",))
        self.assertEqual(verify.lackingGroups(), ("MLKEM9999",))
        error = self.assertRaises(ConfigurationError, verify.tlsGroups, "X25519:MLKEM9999")
        self.assertIn("'MLKEM9999' is not a TLS group", str(error))
