"""
Tests for L{mtlsd._admission}: one object decides who gets in, in every
situation, and its verdict may come later.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL.SSL import X509VerificationCodes as Codes
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._admission import Admission
from mtlsd._build import MtlsServer, ServerConfiguration
from mtlsd._metrics import Metrics
from mtlsd._policy import AllowPolicy
from mtlsd._server import EARLY_LIMIT
from mtlsd._settings import ServerTLSSettings
from mtlsd._verify import VerifyFailure
from mtlsd.test.helpers import hoursAgo
from mtlsd.testing import CertificateAuthority, MemoryConnection, clientContext, serverContext

NOW = datetime.datetime.now(datetime.timezone.utc)


class AdmissionTests(SynchronousTestCase):
    """
    L{Admission}'s verdicts, situation by situation.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.server = self.ca.server()
        self.alice = self.ca.issue("alice")

    def admission(self, **kw: Any) -> Admission:
        return Admission(
            ServerTLSSettings(
                self.server.certificate, self.server.key, trusted=(self.ca.certificate,), **kw
            )
        )

    def test_decide(self) -> None:
        """
        C{decide} admits a client of a trusted CA the allow-list admits; it
        refuses one the allow-list does not, with the client's identity.
        """
        self.assertIsNone(self.admission().decide(self.alice.certificate, ()))
        verdict = self.admission(policy=AllowPolicy(commonNames=["bob"])).decide(
            self.alice.certificate, ()
        )
        assert verdict is not None
        self.assertEqual(
            (verdict.reason, verdict.fields["commonName"]), ("not allowed by policy", "alice")
        )

    def test_resumedExpired(self) -> None:
        """
        A resumed session whose certificate has expired since is refused as
        OpenSSL would refuse it in a full handshake.
        """
        old = self.ca.issue("old", notBefore=hoursAgo(48), days=1)
        verdict = self.admission().resumed(old.certificate, (), NOW)
        assert verdict is not None
        self.assertEqual(
            (verdict.reason, verdict.errno), ("certificate has expired", Codes.ERR_CERT_HAS_EXPIRED)
        )
        self.assertIsNone(self.admission().resumed(self.alice.certificate, (), NOW))

    def test_expired(self) -> None:
        """
        A live session is cut once its certificate has expired.
        """
        admission = self.admission()
        self.assertIsNone(admission.expired(NOW, NOW - datetime.timedelta(seconds=1)))
        verdict = admission.expired(NOW, NOW + datetime.timedelta(seconds=1))
        assert verdict is not None
        self.assertEqual(verdict.reason, "no longer trusted")

    def test_afterHandshakeTrustChanged(self) -> None:
        """
        After a handshake begun under other settings, the admission in force
        decides in full.
        """
        before = self.admission()
        after = Admission(
            ServerTLSSettings(
                self.server.certificate, self.server.key, trusted=(self.server.certificate,)
            )
        )
        verdict = after.afterHandshake(self.alice.certificate, (), False, before, NOW)
        assert isinstance(verdict, VerifyFailure)
        self.assertEqual(verdict.reason, "no longer trusted")
        self.assertIsNone(before.afterHandshake(self.alice.certificate, (), False, before, NOW))


class PendingAdmissionTests(SynchronousTestCase):
    """
    A further check may answer later: the gate holds the connection, the
    application not started, under the handshake timeout.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)
        self.metrics = Metrics()
        globalLogPublisher.addObserver(self.metrics)
        self.addCleanup(globalLogPublisher.removeObserver, self.metrics)
        self.ca = CertificateAuthority()
        self.asked: list[tuple[Any, Deferred[Any]]] = []

        def check(certificate: Any, chain: Any) -> Deferred[Any]:
            answer: Deferred[Any] = Deferred()
            self.asked.append((certificate, answer))
            return answer

        self.check = check
        self.context = serverContext(self.ca.server(), [self.ca.certificate], checks=[check])
        self.alice = self.ca.issue("alice")

    def connect(self) -> MemoryConnection:
        c = MemoryConnection(self.context, clientContext(self.alice, [self.ca.certificate]))
        c.flush()
        return c

    def mtlsdEvents(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("mtlsdEvent") == name]

    def test_applicationStartsAfterTheVerdict(self) -> None:
        """
        The application's C{connectionMade} runs only once the check has
        admitted the client.
        """
        c = self.connect()
        [(certificate, answer)] = self.asked
        self.assertEqual(certificate, self.alice.certificate)
        self.assertFalse(c.app.made)
        self.assertEqual(self.mtlsdEvents("accepted"), [])
        answer.callback(None)
        self.assertTrue(c.app.made)
        [accepted] = self.mtlsdEvents("accepted")
        self.assertEqual(accepted["commonName"], "alice")

    def test_earlyDataKept(self) -> None:
        """
        What the client sends while its verdict is pending, and the end of
        its direction, reach the application once it is admitted, in order.
        """
        c = self.connect()
        [(_, answer)] = self.asked
        c.clientTLS.write(b"early ")
        c.clientTLS.write(b"bytes")
        c.flush()
        self.assertFalse(c.app.made)
        answer.callback(None)
        c.flush()
        self.assertEqual(c.app.received, b"early bytes")
        c.clientTLS.write(b" and later")
        c.flush()
        self.assertEqual(c.app.received, b"early bytes and later")

    def test_earlyDataBounded(self) -> None:
        """
        Past L{EARLY_LIMIT} bytes sent while pending, the client is paused
        (TCP pushes back), and resumed once admitted; nothing is lost.
        """
        c = self.connect()
        [(_, answer)] = self.asked
        calls: list[str] = []
        transport: Any = c.serverTLS.transport
        transport.pauseProducing = lambda: calls.append("pause")
        transport.resumeProducing = lambda: calls.append("resume")
        payload = b"x" * (EARLY_LIMIT + 1)
        c.clientTLS.write(payload)
        c.flush()
        self.assertEqual(calls, ["pause"])
        answer.callback(None)
        c.flush()
        self.assertEqual(calls, ["pause", "resume"])
        self.assertEqual(c.app.received, payload)

    def test_earlyDataOfARefusedClient(self) -> None:
        """
        What a refused client sent while pending never reaches the
        application.
        """
        c = self.connect()
        [(_, answer)] = self.asked
        c.clientTLS.write(b"secret")
        c.flush()
        answer.callback(VerifyFailure(Codes.ERR_CERT_REVOKED, 0, "CN=alice", "revoked by OCSP"))
        c.flush()
        self.assertFalse(c.app.made)
        self.assertEqual(c.app.received, b"")

    def test_closedWhilePending(self) -> None:
        """
        A client gone before the verdict is logged as such.
        """
        c = self.connect()
        c.clientTLS.abortConnection()
        c.flush()
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "closed before the admission checks answered")

    def test_lateRefusal(self) -> None:
        """
        A refusal arriving late is logged and counted like any other; the
        application never starts.
        """
        c = self.connect()
        [(_, answer)] = self.asked
        answer.callback(VerifyFailure(Codes.ERR_CERT_REVOKED, 0, "CN=alice", "revoked by OCSP"))
        c.flush()
        self.assertFalse(c.app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "revoked by OCSP")
        self.assertEqual(
            self.metrics.registry.get_sample_value(
                "mtlsd_handshakes_rejected_total", {"reason": "revoked by OCSP"}
            ),
            1,
        )

    def test_timeoutWhilePending(self) -> None:
        """
        The handshake timeout still runs while the verdict is pending: the
        connection is then cut as a handshake timeout, and the check's
        Deferred is cancelled.
        """
        c = self.connect()
        [(_, answer)] = self.asked
        c.clock.advance(10)
        c.flush()
        self.assertFalse(c.app.made)
        self.assertTrue(answer.called)  # cancelled
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "handshake timeout")

    def test_checksOfAConfiguration(self) -> None:
        """
        The checks of a L{ServerConfiguration} are those of the server built
        from it, as the daemon and the C{mtls:} string build theirs.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        server = self.ca.server()
        files = {
            "server.pem": server.certificatePEM() + server.keyPEM(),
            "ca.pem": self.ca.certificate.public_bytes(Encoding.PEM),
        }
        for name, data in files.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        built = MtlsServer(
            ServerConfiguration(
                os.path.join(directory, "server.pem"),
                clientCertificates=[os.path.join(directory, "ca.pem")],
                checks=(self.check,),
            ),
            Clock(),
        )
        self.context = built.context
        c = self.connect()
        self.assertEqual(len(self.asked), 1)
        self.assertFalse(c.app.made)
