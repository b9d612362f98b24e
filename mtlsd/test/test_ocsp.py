"""
Tests for L{mtlsd._ocsp}: client certificates checked with their CA's OCSP
responder, over real TLS in memory, against a responder made here that
answers what each test needs (good, revoked, unknown, malformed, signed by
the wrong key, stale, slow, down).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._metrics import Metrics
from mtlsd._ocsp import OCSPChecker, responderOf
from mtlsd._pki import makeCertificate, newKey
from mtlsd.testing import (
    CertificateAuthority,
    Credentials,
    MemoryConnection,
    clientContext,
    serverContext,
)

URL = "http://ocsp.test"
Signer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


class Responder:
    """
    An OCSP responder in memory: answers each request about a certificate
    it knows with the status set for it, signed as told.
    """

    def __init__(self, clock: Clock, issuer: Signer) -> None:
        self.clock = clock
        self.issuer = issuer
        self.signer: Signer = issuer
        self.included: list[x509.Certificate] = []
        self.known: dict[int, x509.Certificate] = {}
        self.statuses: dict[int, ocsp.OCSPCertStatus] = {}
        self.nextUpdate: datetime.timedelta | None = datetime.timedelta(hours=1)
        self.thisUpdate = datetime.timedelta(0)
        self.echoNonce = True
        self.wrongNonce = False
        self.requests: list[tuple[str, bytes]] = []
        self.answer: Callable[[str, bytes], Deferred[bytes]] | None = None

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    def fetch(self, url: str, request: bytes) -> Deferred[bytes]:
        self.requests.append((url, request))
        if self.answer is not None:
            return self.answer(url, request)
        return succeed(self.respond(request))

    def respond(self, request: bytes) -> bytes:
        parsed = ocsp.load_der_ocsp_request(request)
        certificate = self.known[parsed.serial_number]
        status = self.statuses.get(parsed.serial_number, ocsp.OCSPCertStatus.GOOD)
        now = self.now()
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                certificate,
                self.issuer[0],
                hashes.SHA1(),
                status,
                now + self.thisUpdate,
                None if self.nextUpdate is None else now + self.nextUpdate,
                now - datetime.timedelta(minutes=1) if revoked else None,
                None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.signer[0])
        )
        if self.included:
            builder = builder.certificates(self.included)
        if self.echoNonce:
            nonce = parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            builder = builder.add_extension(
                x509.OCSPNonce(b"x" * len(nonce) if self.wrongNonce else nonce), critical=False
            )
        return builder.sign(self.signer[1], hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )


class OCSPTests(SynchronousTestCase):
    """
    L{OCSPChecker} as the server's admission check: what each answer, or
    the lack of one, does to a client.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)
        self.metrics = Metrics()
        globalLogPublisher.addObserver(self.metrics)
        self.addCleanup(globalLogPublisher.removeObserver, self.metrics)
        self.clock = Clock()
        self.clock.advance(time.time())
        self.ca = CertificateAuthority()
        self.responder = Responder(self.clock, (self.ca.certificate, self.ca.key))
        self.alice = self.issue("alice")

    def issue(self, name: str) -> Credentials:
        credentials = self.ca.issue(name)
        self.responder.known[credentials.certificate.serial_number] = credentials.certificate
        return credentials

    def checker(self, **options: Any) -> OCSPChecker:
        options.setdefault("responder", URL)
        return OCSPChecker(self.clock, self.responder.fetch, **options)

    def connect(
        self, checker: OCSPChecker, client: Credentials | None = None, context: Any = None
    ) -> MemoryConnection:
        self.context = context or serverContext(
            self.ca.server(), [self.ca.certificate], checks=[checker]
        )
        c = MemoryConnection(
            self.context,
            clientContext(client or self.alice, [self.ca.certificate]),
            clock=self.clock,
        )
        c.flush()
        return c

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("mtlsdEvent") == name]

    def rejectedFor(self) -> list[str]:
        return [e["reason"] for e in self.named("rejected")]

    def counted(self, result: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "mtlsd_ocsp_requests_total", {"result": result}
        )

    def test_good(self) -> None:
        """
        A certificate the responder says is good is admitted; the accepted
        event says OCSP decided, and the request is counted.
        """
        c = self.connect(self.checker())
        self.assertTrue(c.app.made)
        [accepted] = self.named("accepted")
        self.assertEqual(accepted["checks"], "ocsp=good")
        self.assertIn("ocsp=good", accepted["log_format"].format(**accepted))
        self.assertEqual(self.counted("good"), 1)
        [(url, request)] = self.responder.requests
        self.assertEqual(url, URL)
        parsed = ocsp.load_der_ocsp_request(request)
        self.assertEqual(parsed.serial_number, self.alice.certificate.serial_number)

    def test_revoked(self) -> None:
        """
        A certificate the responder says is revoked is refused, soft-fail
        or not.
        """
        self.responder.statuses[self.alice.certificate.serial_number] = ocsp.OCSPCertStatus.REVOKED
        c = self.connect(self.checker())
        self.assertFalse(c.app.made)
        self.assertEqual(self.rejectedFor(), ["certificate revoked (OCSP)"])
        self.assertEqual(self.counted("revoked"), 1)

    def test_unknown(self) -> None:
        """
        C{unknown} admits a client (soft-fail); with C{required}, it is
        refused.
        """
        self.responder.statuses[self.alice.certificate.serial_number] = ocsp.OCSPCertStatus.UNKNOWN
        c = self.connect(self.checker())
        self.assertTrue(c.app.made)
        self.assertEqual(self.named("accepted")[0]["checks"], "ocsp=unknown")
        c = self.connect(self.checker(required=True))
        self.assertFalse(c.app.made)
        self.assertEqual(self.rejectedFor(), ["OCSP status unknown"])

    def assertUnusable(self, why: str) -> None:
        """
        The responder's answer cannot be relied on: the client is admitted
        (soft-fail) with one warning saying why, or refused when OCSP is
        required.
        """
        c = self.connect(self.checker())
        self.assertTrue(c.app.made)
        [warning] = self.named("ocsp-unavailable")
        self.assertIn(why, warning["error"])
        self.assertIn("admitting clients unchecked", warning["log_format"].format(**warning))
        self.assertEqual(self.counted("invalid"), 1)
        c = self.connect(self.checker(required=True))
        self.assertFalse(c.app.made)
        self.assertEqual(self.rejectedFor(), ["OCSP status unknown"])

    def test_malformed(self) -> None:
        """
        An answer that is not an OCSP response.
        """
        self.responder.answer = lambda url, request: succeed(b"<html>Bad gateway</html>")
        self.assertUnusable("malformed answer")

    def test_wrongSigner(self) -> None:
        """
        An answer signed by a key that is neither the CA's nor a responder's
        it delegated.
        """
        other = CertificateAuthority("Other CA")
        self.responder.signer = (other.certificate, other.key)
        self.assertUnusable("signed by neither the CA nor a responder it delegated")

    def test_forgedSignature(self) -> None:
        """
        An answer naming the CA as its signer but signed with another key.
        """

        def forge(url: str, request: bytes) -> Deferred[bytes]:
            answer = self.responder.respond(request)  # the signature ends it
            return succeed(answer[:-1] + bytes([answer[-1] ^ 1]))

        self.responder.answer = forge
        self.assertUnusable("its signature does not verify")

    def delegate(self, usages: list[x509.ObjectIdentifier]) -> None:
        key = newKey()
        certificate = makeCertificate(
            "OCSP responder", key, (self.ca.certificate, self.ca.key), usages=usages
        )
        self.responder.signer = (certificate, key)
        self.responder.included = [certificate]

    def test_delegatedResponder(self) -> None:
        """
        A responder certificate the CA issued for OCSP signing may sign the
        answers.
        """
        self.delegate([ExtendedKeyUsageOID.OCSP_SIGNING])
        c = self.connect(self.checker())
        self.assertTrue(c.app.made)
        self.assertEqual(self.named("accepted")[0]["checks"], "ocsp=good")

    def test_delegateWithoutOCSPSigning(self) -> None:
        """
        A certificate of the CA without the OCSP-signing usage may not: any
        client certificate could otherwise vouch for all the others.
        """
        self.delegate([ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertUnusable("signed by neither the CA nor a responder it delegated")

    def test_stale(self) -> None:
        """
        An answer whose nextUpdate has passed (replayed, or from a stuck
        responder).
        """
        self.responder.nextUpdate = -datetime.timedelta(hours=1)
        self.assertUnusable("stale answer")

    def test_future(self) -> None:
        """
        An answer whose thisUpdate is in the future.
        """
        self.responder.thisUpdate = datetime.timedelta(hours=1)
        self.responder.nextUpdate = datetime.timedelta(hours=2)
        self.assertUnusable("is in the future")

    def test_wrongNonce(self) -> None:
        """
        An answer echoing another nonce than the one sent (a replay).
        """
        self.responder.wrongNonce = True
        self.assertUnusable("the nonce is not the one sent")

    def test_noNonceEchoed(self) -> None:
        """
        A responder need not echo the nonce (many serve pre-signed answers).
        """
        self.responder.echoNonce = False
        self.assertTrue(self.connect(self.checker()).app.made)
        self.assertEqual(self.counted("good"), 1)

    def test_answerAboutAnotherCertificate(self) -> None:
        """
        A good answer about another certificate says nothing of this one.
        """
        bob = self.issue("bob")
        self.responder.echoNonce = False  # the request about bob has none
        self.responder.answer = lambda url, request: succeed(
            self.responder.respond(
                ocsp.OCSPRequestBuilder()
                .add_certificate(bob.certificate, self.ca.certificate, hashes.SHA1())
                .build()
                .public_bytes(serialization.Encoding.DER)
            )
        )
        self.assertUnusable("no answer about this certificate")

    def test_slow(self) -> None:
        """
        A responder that does not answer within the timeout: the client is
        admitted once it has passed (soft-fail) with a warning, or refused
        as C{OCSP responder unavailable} when OCSP is required; the pending
        request is cancelled.
        """
        pending: list[Deferred[bytes]] = []

        def hang(url: str, request: bytes) -> Deferred[bytes]:
            pending.append(Deferred())
            return pending[-1]

        self.responder.answer = hang
        c = self.connect(self.checker(timeout=3))
        self.assertFalse(c.app.made)
        self.clock.advance(2.9)
        self.assertFalse(c.app.made)
        self.clock.advance(0.1)
        c.flush()
        self.assertTrue(c.app.made)
        self.assertTrue(pending[0].called)  # cancelled
        [warning] = self.named("ocsp-unavailable")
        self.assertEqual(warning["error"], "no answer within 3s")
        self.assertEqual(self.counted("unavailable"), 1)
        c = self.connect(self.checker(timeout=3, required=True))
        self.clock.advance(3)
        c.flush()
        self.assertFalse(c.app.made)
        self.assertEqual(self.rejectedFor(), ["OCSP responder unavailable"])

    def test_down(self) -> None:
        """
        A responder that refuses connections: clients are admitted, with one
        warning for the outage (not one per client); it is not asked again
        for a while, then asked, and its recovery is logged.
        """
        self.responder.answer = lambda url, request: fail(ConnectionRefusedError())
        checker = self.checker()
        context = serverContext(self.ca.server(), [self.ca.certificate], checks=[checker])
        for _ in range(3):
            self.assertTrue(self.connect(checker, context=context).app.made)
        self.assertEqual(len(self.responder.requests), 1)
        self.assertEqual(len(self.named("ocsp-unavailable")), 1)
        self.assertEqual([e["checks"] for e in self.named("accepted")], ["ocsp=unavailable"] * 3)
        self.clock.advance(10)
        self.connect(checker, context=context)
        self.assertEqual(len(self.responder.requests), 2)
        self.assertEqual(len(self.named("ocsp-unavailable")), 1)  # the same outage
        self.responder.answer = None
        self.clock.advance(10)
        self.connect(checker, context=context)
        self.assertEqual([e["responder"] for e in self.named("ocsp-available")], [URL])

    def test_concurrentHandshakesShareOneRequest(self) -> None:
        """
        Clients of one certificate whose handshakes overlap wait for one
        request, and all get its answer.
        """
        pending: list[Deferred[bytes]] = []

        def hold(url: str, request: bytes) -> Deferred[bytes]:
            pending.append(Deferred())
            return pending[-1].addCallback(lambda _: self.responder.respond(request))

        self.responder.answer = hold
        checker = self.checker()
        context = serverContext(self.ca.server(), [self.ca.certificate], checks=[checker])
        first = self.connect(checker, context=context)
        second = self.connect(checker, context=context)
        self.assertEqual(len(pending), 1)
        self.assertFalse(first.app.made or second.app.made)
        pending[0].callback(b"")
        first.flush()
        second.flush()
        self.assertTrue(first.app.made and second.app.made)

    def test_cached(self) -> None:
        """
        An answer is cached until its nextUpdate: the next clients of that
        certificate are decided without a request (and counted as cache
        hits), then it is asked again.
        """
        checker = self.checker()
        context = serverContext(self.ca.server(), [self.ca.certificate], checks=[checker])
        for _ in range(3):
            self.assertTrue(self.connect(checker, context=context).app.made)
        self.assertEqual(len(self.responder.requests), 1)
        self.assertEqual(self.metrics.registry.get_sample_value("mtlsd_ocsp_cache_hits_total"), 2)
        self.clock.advance(3601)
        self.connect(checker, context=context)
        self.assertEqual(len(self.responder.requests), 2)

    def test_cacheSeconds(self) -> None:
        """
        C{cacheSeconds} shortens the life of a cached answer; the cache
        holds at most C{maxCached} certificates.
        """
        checker = self.checker(cacheSeconds=5, maxCached=1)
        context = serverContext(self.ca.server(), [self.ca.certificate], checks=[checker])
        self.connect(checker, context=context)
        self.clock.advance(4)
        self.connect(checker, context=context)
        self.assertEqual(len(self.responder.requests), 1)
        self.clock.advance(2)
        self.connect(checker, context=context)
        self.assertEqual(len(self.responder.requests), 2)
        self.connect(checker, self.issue("bob"), context=context)
        self.connect(checker, context=context)  # alice's answer was evicted by bob's
        self.assertEqual(len(self.responder.requests), 4)

    def test_liveSessionCutWhenFoundRevoked(self) -> None:
        """
        Once a cached answer expires, live sessions are checked again on the
        reload tick: one whose certificate is now revoked is cut; a good one
        stays.
        """
        checker = self.checker(cacheSeconds=5)
        context = serverContext(self.ca.server(), [self.ca.certificate], checks=[checker])
        alice = self.connect(checker, context=context)
        bob = self.connect(checker, self.issue("bob"), context=context)
        context.recheck()
        self.assertEqual(len(self.responder.requests), 2)  # nothing expired yet
        self.responder.statuses[self.alice.certificate.serial_number] = ocsp.OCSPCertStatus.REVOKED
        self.clock.advance(6)
        context.recheck()
        alice.flush()
        bob.flush()
        [cut] = self.named("cut")
        self.assertEqual(
            (cut["commonName"], cut["reason"]), ("alice", "certificate revoked (OCSP)")
        )
        self.assertTrue(alice.client.lost)
        self.assertFalse(bob.client.lost)

    def test_unavailableCutsNoOne(self) -> None:
        """
        A responder down at a recheck cuts no live session, even when OCSP
        is required: that applies to new clients.
        """
        checker = self.checker(cacheSeconds=5, required=True)
        context = serverContext(self.ca.server(), [self.ca.certificate], checks=[checker])
        alice = self.connect(checker, context=context)
        self.responder.answer = lambda url, request: fail(ConnectionRefusedError())
        self.clock.advance(6)
        context.recheck()
        alice.flush()
        self.assertEqual(self.named("cut"), [])
        self.assertFalse(alice.client.lost)

    def test_responderOfTheCertificate(self) -> None:
        """
        Without C{responder}, the responder is the one the certificate's
        Authority Information Access names; a certificate naming none is
        admitted unchecked (C{ocsp=no-responder}), or refused when OCSP is
        required.
        """
        named = self.withResponder("http://aia.test/ocsp")
        self.assertEqual(responderOf(named.certificate), "http://aia.test/ocsp")
        self.assertTrue(self.connect(self.checker(responder=None), named).app.made)
        self.assertEqual(self.responder.requests[0][0], "http://aia.test/ocsp")
        self.assertTrue(self.connect(self.checker(responder=None)).app.made)
        self.assertEqual(self.named("accepted")[-1]["checks"], "ocsp=no-responder")
        self.assertFalse(self.connect(self.checker(responder=None, required=True)).app.made)
        self.assertEqual(self.rejectedFor(), ["OCSP status unknown"])

    def withResponder(self, url: str) -> Credentials:
        key = newKey()
        certificate = makeCertificate(
            "carol",
            key,
            (self.ca.certificate, self.ca.key),
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
            ocspURL=url,
        )
        self.responder.known[certificate.serial_number] = certificate
        return Credentials(certificate, key)

    def test_chain(self) -> None:
        """
        With C{checkChain}, the intermediates of a client's chain are
        checked too (each with its issuer's answer); without it, the leaf
        only.
        """
        intermediateKey = newKey()
        intermediate = makeCertificate(
            "Intermediate CA", intermediateKey, (self.ca.certificate, self.ca.key), isCA=True
        )
        self.responder.known[intermediate.serial_number] = intermediate
        self.responder.statuses[intermediate.serial_number] = ocsp.OCSPCertStatus.REVOKED
        leafKey = newKey()
        leaf = makeCertificate(
            "dave",
            leafKey,
            (intermediate, intermediateKey),
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        dave = Credentials(leaf, leafKey, (intermediate,))
        issuers = {leaf.serial_number: (intermediate, intermediateKey)}

        def respond(url: str, request: bytes) -> Deferred[bytes]:
            serial = ocsp.load_der_ocsp_request(request).serial_number
            self.responder.issuer = issuers.get(serial, (self.ca.certificate, self.ca.key))
            self.responder.signer = self.responder.issuer
            self.responder.known[leaf.serial_number] = leaf
            return succeed(self.responder.respond(request))

        self.responder.answer = respond
        self.assertTrue(self.connect(self.checker(), dave).app.made)
        self.assertEqual(len(self.responder.requests), 1)
        self.assertFalse(self.connect(self.checker(checkChain=True), dave).app.made)
        self.assertEqual(self.rejectedFor(), ["certificate revoked (OCSP)"])
