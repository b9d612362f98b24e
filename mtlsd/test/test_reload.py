"""
Tests for the trust lifecycle: reload, revocation of live sessions, CRLs,
allow-lists and the TLS version floor, with real files, a fake clock and
real TLS in memory.
"""

import datetime
import os
import signal
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL.SSL import X509VerificationCodes as Codes
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from mtlsd import ServerContext, ServerTLSSettings, _sessions, _settings, _signals
from mtlsd._pki import certificatePEM, keyPEM, makeCRL
from mtlsd._policy import AllowPolicy
from mtlsd._reasons import verifyErrorText
from mtlsd._reload import TrustReloader
from mtlsd._signals import SignalFanOut
from mtlsd.test.helpers import hoursAgo
from mtlsd.testing import (
    CertificateAuthority,
    Credentials,
    MemoryConnection,
    clientContext,
    selfSigned,
)


class _Case(SynchronousTestCase):
    """
    Trust files in a directory, a context loaded from them, and a reloader
    polling them every 2 seconds of a fake clock.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )
        # SIGHUP's fan-out of this test alone (no reloader another test left).
        self.patch(_signals, "sighup", SignalFanOut(signal.SIGHUP))
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.ca = CertificateAuthority()
        self.server = self.ca.server()
        self.alice, self.bob = selfSigned("alice"), selfSigned("bob")
        self.clock = Clock()
        self.write("server.pem", certificatePEM(self.server.certificate) + keyPEM(self.server.key))
        self.crls: list[str] = []
        self.options: dict[str, Any] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def write(self, name: str, data: bytes) -> None:
        """
        Rewrite a file in place.
        """
        with open(self.path(name), "wb") as f:
            f.write(data)
        os.chmod(self.path(name), 0o600)  # keys are, and no warning about it

    def rename(self, name: str, data: bytes) -> None:
        """
        Replace a file atomically, as configuration tools do.
        """
        self.write(name + ".new", data)
        os.replace(self.path(name + ".new"), self.path(name))

    def trust(self, *credentials: Credentials | x509.Certificate) -> bytes:
        return certificatePEM(
            *(c if isinstance(c, x509.Certificate) else c.certificate for c in credentials)
        )

    def load(self) -> ServerTLSSettings:
        return ServerTLSSettings.fromFiles(
            self.path("server.pem"),
            None,
            [self.path("clients.pem")],
            [self.path(name) for name in self.crls],
            **self.options,
        )

    def start(self, keepLiveSessions: bool = False) -> ServerContext:
        self.context = ServerContext(self.load())
        paths = [self.path(n) for n in ("server.pem", "clients.pem", *self.crls)]
        self.reloader = TrustReloader(
            self.context, self.load, paths, self.clock, 2, keepLiveSessions
        )
        self.reloader.startService()
        self.addCleanup(self.reloader.stopService)
        return self.context

    def connect(self, client: Credentials) -> MemoryConnection:
        c = MemoryConnection(
            self.context, clientContext(client, [self.ca.certificate]), clock=self.clock
        )
        c.flush()
        return c

    def writeCRL(
        self, *revoked: Credentials, days: float = 30, der: bool = False, lastUpdate: Any = None
    ) -> None:
        crl = makeCRL(
            (self.ca.certificate, self.ca.key), [c.certificate for c in revoked], days, lastUpdate
        )
        encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
        self.rename("ca.crl", crl.public_bytes(encoding))

    def intermediateClient(self) -> tuple[Credentials, Credentials]:
        """
        A client certificate issued by an intermediate CA of the test CA.
        """
        from mtlsd._pki import makeCertificate, newKey

        key = newKey()
        intermediate = Credentials(
            makeCertificate("Intermediate", key, (self.ca.certificate, self.ca.key), isCA=True),
            key,
        )
        leafKey = newKey()
        leaf = makeCertificate("frank", leafKey, (intermediate.certificate, key), usages=())
        return Credentials(leaf, leafKey, [intermediate.certificate]), intermediate

    def mtlsdEvents(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("mtlsdEvent") == name]

    def assertLive(self, c: MemoryConnection) -> None:
        """
        The connection is up and carries data.
        """
        self.assertTrue(c.app.made)
        self.assertIsNone(c.client.lost)
        before = c.app.received
        c.clientTLS.write(b"ping")
        c.flush()
        self.assertEqual(c.app.received, before + b"ping")


class ReloadTests(_Case):
    def test_inPlaceAndRename(self) -> None:
        """
        A bundle rewritten in place, then replaced by a rename, takes effect
        within one interval, without a restart.
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        self.assertTrue(self.connect(self.alice).app.made)
        self.assertFalse(self.connect(self.bob).app.made)

        self.write("clients.pem", self.trust(self.bob))
        self.clock.advance(1.9)
        self.assertTrue(self.connect(self.alice).app.made)
        self.clock.advance(0.1)
        self.assertFalse(self.connect(self.alice).app.made)
        self.assertTrue(self.connect(self.bob).app.made)

        self.rename("clients.pem", self.trust(self.alice))
        self.clock.advance(2)
        self.assertTrue(self.connect(self.alice).app.made)
        self.assertFalse(self.connect(self.bob).app.made)
        self.assertEqual(self.reloader.reloads, 2)
        self.assertEqual(len(self.mtlsdEvents("reloaded")), 2)

    def test_unchangedFilesNoReload(self) -> None:
        """
        Files that did not change are not reloaded.
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        self.clock.advance(10)
        self.assertEqual(self.reloader.reloads, 0)

    def test_failedReloadKeepsTrust(self) -> None:
        """
        A half-written bundle, or a server key that does not match the new
        certificate, is refused with one error; the trust in force stays,
        and the next good write is picked up.
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        good = self.trust(self.bob)
        self.write("clients.pem", good[: len(good) // 2])
        self.clock.advance(2)
        self.write("server.pem", certificatePEM(self.server.certificate) + keyPEM(self.bob.key))
        self.clock.advance(2)
        self.assertEqual(self.reloader.failures, 2)
        failed = self.mtlsdEvents("reload-failed")
        self.assertIn("clients.pem", failed[0]["error"])
        self.assertIn("does not match the certificate", failed[1]["error"])
        self.assertTrue(self.connect(self.alice).app.made)
        self.assertFalse(self.connect(self.bob).app.made)

        self.write("server.pem", certificatePEM(self.server.certificate) + keyPEM(self.server.key))
        self.write("clients.pem", good)
        self.clock.advance(2)
        self.assertEqual(self.reloader.reloads, 1)
        self.assertTrue(self.connect(self.bob).app.made)

    def test_newServerCertificate(self) -> None:
        """
        A new server certificate is used for new handshakes.
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        renewed = self.ca.server()
        self.rename("server.pem", certificatePEM(renewed.certificate) + keyPEM(renewed.key))
        self.clock.advance(2)
        c = self.connect(self.alice)
        self.assertEqual(
            c.clientConnection.get_peer_certificate(as_cryptography=True), renewed.certificate
        )

    def test_sighup(self) -> None:
        """
        SIGHUP reloads at once, whatever the interval.
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        self.write("clients.pem", self.trust(self.bob))
        os.kill(os.getpid(), signal.SIGHUP)
        self.clock.advance(0)
        self.assertEqual(self.reloader.reloads, 1)
        self.assertTrue(self.connect(self.bob).app.made)

    def test_sighupIgnoredWhileStopping(self) -> None:
        """
        Once stopped (the daemon draining), SIGHUP is ignored rather than
        left to its default action, which would kill the process; a handler
        that was there before is put back.
        """
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        self.write("clients.pem", self.trust(self.alice))
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.start()
        self.reloader.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)
        handler = lambda *args: None  # noqa: E731
        signal.signal(signal.SIGHUP, handler)
        self.start()
        self.reloader.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), handler)


class SighupFanOutTests(_Case):
    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        self.before: list[int] = []
        signal.signal(signal.SIGHUP, lambda signum, frame: self.before.append(signum))
        self.write("clients.pem", self.trust(self.alice))
        self.write("other.pem", self.trust(self.bob))

    def loadOther(self) -> ServerTLSSettings:
        return ServerTLSSettings.fromFiles(self.path("server.pem"), None, [self.path("other.pem")])

    def startOther(self) -> TrustReloader:
        """
        A second server in the same process (a second C{mtls:} endpoint):
        its own context, its own trust file, its own reloader.
        """
        self.otherContext = ServerContext(self.loadOther())
        reloader = TrustReloader(
            self.otherContext, self.loadOther, [self.path("other.pem")], self.clock, 0
        )
        reloader.startService()
        self.addCleanup(reloader.stopService)
        return reloader

    def test_everyReloader(self) -> None:
        """
        One SIGHUP reloads every reloader of the process, and the handler
        installed before them is still called; once one has stopped, the
        other still answers; once both have, that handler is back.
        """
        previous = signal.getsignal(signal.SIGHUP)
        self.start()
        other = self.startOther()
        self.write("clients.pem", self.trust(self.bob))
        self.write("other.pem", self.trust(self.alice))
        os.kill(os.getpid(), signal.SIGHUP)
        self.clock.advance(0)
        self.assertEqual((self.reloader.reloads, other.reloads), (1, 1))
        self.assertEqual(self.before, [signal.SIGHUP])
        self.assertTrue(self.connect(self.bob).app.made)
        c = MemoryConnection(self.otherContext, clientContext(self.alice, [self.ca.certificate]))
        c.flush()
        self.assertTrue(c.app.made)

        self.reloader.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        self.clock.advance(0)
        self.assertEqual((self.reloader.reloads, other.reloads), (1, 2))
        self.assertEqual(self.before, [signal.SIGHUP] * 2)
        other.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), previous)

    def test_handlerInstalledSince(self) -> None:
        """
        A handler the program puts in after the reloaders started, chaining
        the one it found, is called with them; it stays in place when they
        stop; a reloader started afterwards chains it in turn and reloads
        once per signal (no endless loop between the two handlers).
        """
        self.start()
        found = signal.getsignal(signal.SIGHUP)
        assert callable(found)
        later: list[int] = []

        def chaining(signum: int, frame: Any) -> None:
            later.append(signum)
            found(signum, frame)

        signal.signal(signal.SIGHUP, chaining)
        os.kill(os.getpid(), signal.SIGHUP)
        self.clock.advance(0)
        self.assertEqual(
            (self.reloader.reloads, later, self.before), (1, [signal.SIGHUP], [signal.SIGHUP])
        )
        self.reloader.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), chaining)
        other = self.startOther()
        os.kill(os.getpid(), signal.SIGHUP)
        self.clock.advance(0)
        self.assertEqual((other.reloads, later), (1, [signal.SIGHUP] * 2))

    def test_stoppedBeforeItsTurn(self) -> None:
        """
        A reloader stopped between the signal and the reactor's next turn
        does not reload.
        """
        self.start()
        os.kill(os.getpid(), signal.SIGHUP)
        self.reloader.stopService()
        self.clock.advance(0)
        self.assertEqual(self.reloader.reloads, 0)
        self.assertEqual(self.before, [signal.SIGHUP])


class RaceTests(_Case):
    def test_handshakeAcrossReload(self) -> None:
        """
        A client whose connection began before a reload that removed it, and
        whose handshake completes after, is refused: OpenSSL verified it
        with the old trust, mtlsd decides again with the new.
        """
        self.write("clients.pem", self.trust(self.alice, self.bob))
        self.start()
        c = MemoryConnection(
            self.context,
            clientContext(self.bob, [self.ca.certificate]),
            clock=self.clock,
            greet=False,
        )
        self.write("clients.pem", self.trust(self.alice))
        self.clock.advance(2)
        c.flush()
        self.assertFalse(c.app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual((rejected["reason"], rejected["commonName"]), ("no longer trusted", "bob"))

    def test_unexpectedErrorKeepsPolling(self) -> None:
        """
        An unexpected error while reloading is logged; the next change is
        still picked up.
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        restore = self.patch(self.reloader, "_load", lambda: 1 / 0)
        self.write("clients.pem", self.trust(self.bob))
        self.clock.advance(2)
        self.assertEqual(len(self.mtlsdEvents("reload-failed")), 1)
        restore.restore()
        self.write("clients.pem", self.trust(self.bob, self.alice))
        self.clock.advance(2)
        self.assertTrue(self.connect(self.bob).app.made)

    def test_expiredSessionCut(self) -> None:
        """
        A live session whose certificate expires is cut, without any file
        changing.
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        c = self.connect(self.alice)
        later = self.alice.certificate.not_valid_after_utc + datetime.timedelta(seconds=1)
        self.assertEqual(self.context.cutExpired(now=later - datetime.timedelta(days=1)), 0)
        self.assertEqual(self.context.cutExpired(now=later), 1)
        c.flush()
        self.assertIsNotNone(c.client.lost)


class RevocationTests(_Case):
    def test_removedClientCut(self) -> None:
        """
        A live connection whose certificate left the bundle is cut at the
        reload, with an event naming it and the reason; a connection that
        stays trusted goes on.
        """
        self.write("clients.pem", self.trust(self.alice, self.bob))
        self.start()
        alice, bob = self.connect(self.alice), self.connect(self.bob)
        self.assertLive(alice)
        self.assertLive(bob)
        self.write("clients.pem", self.trust(self.alice))
        self.clock.advance(2)
        alice.flush()
        bob.flush()
        self.assertIsNotNone(bob.client.lost)
        self.assertIsNotNone(bob.app.lost)
        self.assertLive(alice)
        [cut] = self.mtlsdEvents("cut")
        self.assertEqual((cut["commonName"], cut["reason"]), ("bob", "no longer trusted"))

    def test_keepLiveSessions(self) -> None:
        """
        With C{keepLiveSessions}, a reload only changes new handshakes.
        """
        self.write("clients.pem", self.trust(self.alice, self.bob))
        self.start(keepLiveSessions=True)
        bob = self.connect(self.bob)
        self.write("clients.pem", self.trust(self.alice))
        self.clock.advance(2)
        self.assertLive(bob)
        self.assertFalse(self.connect(self.bob).app.made)
        self.assertEqual(self.mtlsdEvents("cut"), [])

    def test_caRemoved(self) -> None:
        """
        Removing a CA cuts the live sessions of the clients it issued.
        """
        carol = self.ca.issue("carol")
        self.write("clients.pem", self.trust(self.ca.certificate, self.alice))
        self.start()
        c = self.connect(carol)
        self.assertLive(c)
        self.write("clients.pem", self.trust(self.alice))
        self.clock.advance(2)
        c.flush()
        self.assertIsNotNone(c.client.lost)
        [cut] = self.mtlsdEvents("cut")
        self.assertEqual(cut["reason"], "no longer trusted")

    def test_policyChange(self) -> None:
        """
        Settings whose allow-list no longer admits a live client cut it.
        """
        self.write("clients.pem", self.trust(self.alice, self.bob))
        context = self.start()
        alice, bob = self.connect(self.alice), self.connect(self.bob)
        context.update(attrs.evolve(self.load(), policy=AllowPolicy(commonNames=["alice"])))
        self.assertEqual(context.revalidate(), 1)
        bob.flush()
        self.assertIsNotNone(bob.client.lost)
        self.assertLive(alice)
        [cut] = self.mtlsdEvents("cut")
        self.assertEqual(cut["reason"], "not allowed by policy")


class CRLTests(_Case):
    def setUp(self) -> None:
        super().setUp()
        self.carol, self.dave = self.ca.issue("carol"), self.ca.issue("dave")
        self.crls = ["ca.crl"]
        self.writeCRL()

    def test_revokedAtHandshake(self) -> None:
        """
        A revoked client is rejected at the handshake with C{certificate
        revoked}; others of the same CA get in.  DER CRLs work too.
        """
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.writeCRL(self.carol, der=True)
        self.start()
        self.assertFalse(self.connect(self.carol).app.made)
        self.assertTrue(self.connect(self.dave).app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "certificate revoked")

    def test_revocationCutsLiveSession(self) -> None:
        """
        A CRL that newly lists a connected client cuts it as C{revoked}.
        """
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.start()
        carol, dave = self.connect(self.carol), self.connect(self.dave)
        self.assertLive(carol)
        self.writeCRL(self.carol)
        self.clock.advance(2)
        carol.flush()
        self.assertIsNotNone(carol.client.lost)
        self.assertLive(dave)
        [cut] = self.mtlsdEvents("cut")
        self.assertEqual((cut["commonName"], cut["reason"]), ("carol", "revoked"))

    def test_caWithoutCRL(self) -> None:
        """
        Clients of a CA that has no CRL, and pinned self-signed clients, are
        not checked by default; with C{crlRequired} the CA's clients are
        rejected and a warning said so at load.
        """
        other = CertificateAuthority("Other CA")
        erin = other.issue("erin")
        self.write("clients.pem", self.trust(self.ca.certificate, other.certificate, self.alice))
        self.start()
        self.assertTrue(self.connect(erin).app.made)
        self.assertTrue(self.connect(self.alice).app.made)
        self.options = {"crlRequired": True}
        self.assertTrue(any("--crl-required" in w for w in self.load().warnings()))
        self.context.update(self.load())
        self.assertFalse(self.connect(erin).app.made)
        self.assertTrue(self.connect(self.dave).app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], verifyErrorText(Codes.ERR_UNABLE_TO_GET_CRL))

    def test_expiredCRL(self) -> None:
        """
        A CRL past its nextUpdate rejects every client of its CA (OpenSSL
        fails closed) and is warned about; one close to it is warned about
        ahead.
        """
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.writeCRL(days=1, lastUpdate=hoursAgo(48))
        self.start()
        self.assertTrue(any("past its nextUpdate" in w for w in self.load().warnings()))
        self.assertFalse(self.connect(self.dave).app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], verifyErrorText(Codes.ERR_CRL_HAS_EXPIRED))
        self.writeCRL()
        self.clock.advance(2)
        self.assertTrue(self.connect(self.dave).app.made)
        crl = makeCRL((self.ca.certificate, self.ca.key), days=0.5)
        settings = ServerTLSSettings(
            self.server.certificate, self.server.key, (), (self.ca.certificate,), (crl,)
        )
        self.assertTrue(any("reaches its nextUpdate" in w for w in settings.warnings()))

    def test_crlOfAbsentCA(self) -> None:
        """
        A CRL of a CA that is not in the bundle cannot be checked (its
        signature needs the CA): it is left out with a warning, and pinned
        certificates of that CA, listed or not, are admitted.  Such a
        certificate is revoked by removing it from the bundle.
        """
        self.write("clients.pem", self.trust(self.carol, self.dave))
        self.writeCRL(self.carol)
        self.start()
        self.assertIn("is not signed by a CA of the bundle", " ".join(self.load().warnings()))
        self.assertTrue(self.connect(self.carol).app.made)
        self.write("clients.pem", self.trust(self.dave))
        self.clock.advance(2)
        self.assertFalse(self.connect(self.carol).app.made)
        self.assertTrue(self.connect(self.dave).app.made)

    def test_otherCRLsFailClosed(self) -> None:
        """
        A delta CRL of a trusted CA is not used alone by OpenSSL: its
        clients are rejected (never admitted unchecked), with a warning.
        """
        from cryptography.hazmat.primitives import hashes

        now = datetime.datetime.now(datetime.timezone.utc)
        delta = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.certificate.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=1))
            .add_extension(x509.DeltaCRLIndicator(1), critical=True)
            .sign(self.ca.key, hashes.SHA256())
        )
        self.rename("ca.crl", delta.public_bytes(serialization.Encoding.PEM))
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.start()
        self.assertIn("delta or partitioned CRL", " ".join(self.load().warnings()))
        self.assertFalse(self.connect(self.dave).app.made)

    def test_revokedIntermediateCutsLiveSession(self) -> None:
        """
        With C{crlCheckChain}, the root CA's CRL revoking an intermediate
        CA cuts the live sessions of that intermediate's clients, though the
        intermediate itself has no CRL.
        """
        frank, intermediate = self.intermediateClient()
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.options = {"crlCheckChain": True}
        self.start()
        c = self.connect(frank)
        self.assertLive(c)
        self.writeCRL(intermediate)
        self.clock.advance(2)
        c.flush()
        self.assertIsNotNone(c.client.lost)
        [cut] = self.mtlsdEvents("cut")
        self.assertEqual((cut["commonName"], cut["reason"]), ("frank", "revoked"))

    def test_checkChain(self) -> None:
        """
        With C{crlCheckChain}, a revoked intermediate CA rejects its
        clients; without, only the leaf's issuer's CRL counts.
        """
        frank, intermediate = self.intermediateClient()
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.writeCRL(intermediate)
        self.start()
        self.assertTrue(self.connect(frank).app.made)
        self.options = {"crlCheckChain": True}
        self.context.update(self.load())
        self.assertFalse(self.connect(frank).app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "certificate revoked")


class WarningTests(_Case):
    def test_warnedOnceAndAhead(self) -> None:
        """
        Warnings are logged at start and when they first apply while
        running (a CRL nearing its nextUpdate), each once.
        """
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.crls = ["ca.crl"]
        crl = makeCRL((self.ca.certificate, self.ca.key), days=2)
        self.write("ca.crl", crl.public_bytes(serialization.Encoding.PEM))
        self.options = {"policy": AllowPolicy(commonNames=["x"])}
        self.start()
        self.assertEqual(self.mtlsdEvents("warning"), [])
        self.clock.advance(2)
        self.patch(
            _settings,
            "CRL_WARNING_AHEAD",
            _settings.CRL_WARNING_AHEAD + datetime.timedelta(days=2),
        )
        self.clock.advance(2)
        self.clock.advance(2)
        [warning] = self.mtlsdEvents("warning")
        self.assertIn("reaches its nextUpdate", warning["problem"])


class PolicyTests(_Case):
    def test_rejectedWithIdentity(self) -> None:
        """
        A verified client outside the allow-list is rejected as C{not
        allowed by policy}, with the identity it presented.
        """
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.options = {"policy": AllowPolicy(uris=["spiffe://example.org/ns/prod/*"])}
        self.start()
        web = self.ca.issue("web", uris=("spiffe://example.org/ns/prod/web",))
        job = self.ca.issue("job", uris=("spiffe://example.org/ns/dev/job",))
        self.assertTrue(self.connect(web).app.made)
        self.assertFalse(self.connect(job).app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "not allowed by policy")
        self.assertEqual(rejected["uris"], ("spiffe://example.org/ns/dev/job",))
        self.assertEqual(rejected["commonName"], "job")

    def test_caWithoutAllowListWarns(self) -> None:
        """
        A trusted CA without an allow-list is warned about; self-signed
        client certificates, or an allow-list, are not.
        """
        self.write("clients.pem", self.trust(self.ca.certificate, self.alice))
        [warning] = self.load().warnings()
        self.assertIn("every certificate issued by CA CN=Test CA is admitted", warning)
        self.options = {"policy": AllowPolicy(commonNames=["x"])}
        self.assertEqual(self.load().warnings(), [])


class TLSVersionTests(_Case):
    def test_minimumVersion(self) -> None:
        """
        With C{minimumTLSVersion="1.3"} a client limited to TLS 1.2 is
        refused; by default it is accepted.
        """
        self.write("clients.pem", self.trust(self.alice))
        for minimum, admitted in [("1.2", True), ("1.3", False)]:
            self.options = {"minimumTLSVersion": minimum}
            client = clientContext(self.alice, [self.ca.certificate])
            client._context.set_max_proto_version(SSL.TLS1_2_VERSION)
            c = MemoryConnection(ServerContext(self.load()), client)
            c.flush()
            self.assertEqual(c.app.made, admitted, minimum)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "TLS error: unsupported protocol")


class SharedCertificateTests(_Case):
    def test_warns(self) -> None:
        """
        A client presenting the server's own certificate gets in (the recipe
        allows it) with a warning.
        """
        # The recipe's certificate: self-signed, no extended key usage.
        recipe = selfSigned("localhost", usages=(), names=("localhost",))
        self.write("server.pem", certificatePEM(recipe.certificate) + keyPEM(recipe.key))
        self.write("clients.pem", self.trust(recipe))
        self.start()
        self.ca.certificate = recipe.certificate  # what the client trusts
        shared = recipe
        self.assertTrue(self.connect(shared).app.made)
        [warning] = self.mtlsdEvents("shared-certificate")
        self.assertIn("server's own certificate", warning["log_format"])


class ResumptionTests(_Case):
    """
    TLS 1.3 session tickets: a client resumes without a new certificate
    check only within the context that verified it.  A reload makes a new
    context with new ticket keys, so a revoked or removed client cannot
    resume.
    """

    def offerSessions(self, client: Credentials) -> Any:
        """
        @return: a client context whose connections offer the session of its
            first one.
        """
        offering = clientContext(client, [self.ca.certificate])
        first = MemoryConnection(self.context, offering, clock=self.clock)
        first.flush()
        self.assertTrue(first.app.made)
        session: Any = first.clientConnection.get_session()
        # Closed cleanly (close_notify): OpenSSL marks the session of a
        # connection freed without one not resumable, whenever the garbage
        # collector gets to it.
        first.clientTLS.loseConnection()
        first.flush()
        connect = offering.clientConnectionForTLS

        def resume(tlsProtocol: Any) -> Any:
            connection = connect(tlsProtocol)
            connection.set_session(session)
            return connection

        offering.clientConnectionForTLS = resume  # type: ignore[method-assign]
        return offering

    def resumed(self) -> list[bool]:
        return [e["resumed"] for e in self.mtlsdEvents("accepted")]

    def test_resumedUntilReload(self) -> None:
        """
        A client offering its earlier session resumes it (the accepted
        event says so); after a reload the same offer gets a full handshake.
        """
        self.write("clients.pem", self.trust(self.alice, self.bob))
        self.start()
        offering = self.offerSessions(self.alice)
        self.assertLive(MemoryConnection(self.context, offering, clock=self.clock))
        self.write("clients.pem", self.trust(self.alice))
        self.clock.advance(2)
        self.assertLive(MemoryConnection(self.context, offering, clock=self.clock))
        self.assertEqual(self.resumed(), [False, True, False])

    def test_revokedCannotResume(self) -> None:
        """
        Once a CRL revoking the client is loaded, its earlier session is not
        resumed: the full handshake rejects it.
        """
        self.carol = self.ca.issue("carol")
        self.crls = ["ca.crl"]
        self.writeCRL()
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.start()
        offering = self.offerSessions(self.carol)
        self.writeCRL(self.carol)
        self.clock.advance(2)
        again = MemoryConnection(self.context, offering, clock=self.clock)
        again.flush()
        self.assertFalse(again.app.made)
        self.assertEqual(
            [e["reason"] for e in self.mtlsdEvents("rejected")], ["certificate revoked"]
        )
        self.assertEqual(self.resumed(), [False])

    def test_expiredCannotResume(self) -> None:
        """
        A session whose client certificate has expired since is refused
        (OpenSSL checks nothing when it resumes).
        """
        self.write("clients.pem", self.trust(self.alice))
        self.start()
        offering = self.offerSessions(self.alice)
        self.clock.advance(self.alice.certificate.not_valid_after_utc.timestamp() + 1)
        again = MemoryConnection(self.context, offering, clock=self.clock)
        again.flush()
        self.assertFalse(again.app.made)
        [rejected] = self.mtlsdEvents("rejected")
        self.assertEqual(rejected["reason"], "certificate has expired")

    def test_staleCRLCannotResume(self) -> None:
        """
        Once the CRL of a resumed client's CA is past its nextUpdate (the
        files unchanged, so no reload), the session is not resumed: as a full
        handshake would be, it is refused.
        """
        self.carol = self.ca.issue("carol")
        self.crls = ["ca.crl"]
        self.writeCRL(days=1)
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.start()
        offering = self.offerSessions(self.carol)
        crl = x509.load_pem_x509_crl(open(self.path("ca.crl"), "rb").read())
        assert crl.next_update_utc is not None
        self.clock.advance(crl.next_update_utc.timestamp() + 1)
        again = MemoryConnection(self.context, offering, clock=self.clock)
        again.flush()
        self.assertFalse(again.app.made)
        [refused] = self.mtlsdEvents("rejected")
        self.assertEqual(refused["reason"], "no longer trusted")

    def test_knownChainsMostRecentlyUsed(self) -> None:
        """
        The chains kept for resumed clients are the most recently used: one
        a resumption just used outlives one learnt later but not used since.
        """
        self.patch(_sessions, "KNOWN_CHAINS", 2)
        self.write("clients.pem", self.trust(self.ca.certificate))
        context = self.start()
        a, b, c, i = (self.ca.issue(n).certificate for n in "abci")
        context.sessions.rememberChain(a, (i,))
        context.sessions.rememberChain(b, (i,))
        self.assertEqual(context.sessions.chainOf(a), (i,))
        context.sessions.rememberChain(c, (i,))
        self.assertEqual((context.sessions.chainOf(a), context.sessions.chainOf(b)), ((i,), ()))

    def test_resumedSessionKeepsChain(self) -> None:
        """
        A resumed client sends no certificates; its intermediates, known
        from its full handshake, still let a reload recheck it: it is not
        cut while it stays trusted.
        """
        frank, _ = self.intermediateClient()
        self.write("clients.pem", self.trust(self.ca.certificate))
        self.start()
        resumed = MemoryConnection(self.context, self.offerSessions(frank), clock=self.clock)
        resumed.flush()
        self.write("clients.pem", self.trust(self.ca.certificate, self.bob))
        self.clock.advance(2)
        self.assertTrue(self.mtlsdEvents("reloaded"))
        self.assertLive(resumed)
        self.assertEqual(self.resumed(), [False, True])
