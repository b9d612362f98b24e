# -*- test-case-name: mtlsd.test.test_ocsp -*-
"""
OCSP for client certificates: an L{AdmissionCheck} that asks the CA's
responder (RFC 6960) whether a client's certificate is revoked, without
blocking the reactor, and that verifies and caches the answers.

cryptography's C{x509.ocsp} builds the requests and parses the responses;
Twisted's L{Agent} sends them.  Soft-fail by default: a responder that does
not answer, or answers something that cannot be relied on, admits the
client (one warning per outage); C{required} refuses instead.  C{revoked}
always refuses.
"""

from __future__ import annotations

import base64
import datetime
import math
import os
from collections.abc import Callable, Sequence
from io import BytesIO
from urllib.parse import quote, urlsplit

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    SignatureAlgorithmOID,
)
from OpenSSL import SSL
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from ._admission import Admitted, Verdict, refusal
from ._errors import ConfigurationError
from ._events import emit, serviceField
from ._reasons import OCSP_REVOKED, OCSP_UNAVAILABLE, OCSP_UNKNOWN

log = Logger(namespace="mtlsd")

DEFAULT_OCSP_TIMEOUT = 3.0
CACHE_SECONDS = 3600.0  # the life of an answer without nextUpdate
MAX_CACHED = 10_000
RETRY_SECONDS = 10.0  # a responder that failed is not asked again before
LEEWAY = datetime.timedelta(minutes=5)  # clock skew allowed on thisUpdate and nextUpdate
MAX_ANSWER = 64 * 1024  # bytes
_GET_LIMIT = 255  # RFC 5019 2.1.1: GET for a request URL shorter than this

Fetch = Callable[[str, bytes], "Deferred[bytes]"]
"""
Send a DER OCSP request to a responder's URL; fire with the DER answer.
"""

_ERR_CERT_REVOKED = SSL.X509VerificationCodes.ERR_CERT_REVOKED


class _Unusable(Exception):
    """
    The responder's answer cannot be relied on (the message says why).
    """


@frozen
class _Status:
    """
    What is known of one certificate until C{until} (clock seconds):
    C{good}, C{revoked}, C{unknown} (the responder does not know it, or
    answered something that cannot be relied on), C{unavailable} (no
    answer) or C{no-responder} (none named).
    """

    status: str
    until: float


def responderOf(certificate: x509.Certificate) -> str | None:
    """
    @return: the OCSP responder URL of C{certificate}'s Authority
        Information Access extension, if any.
    """
    try:
        access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except (x509.ExtensionNotFound, ValueError):
        return None
    for description in access.value:
        if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            description.access_location, x509.UniformResourceIdentifier
        ):
            return description.access_location.value
    return None


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    """
    Agent's connection factory, without its two log lines per request
    ("Starting factory", "Stopping factory": Twisted issue 9235); the usual
    remedy (autopush, vumi) as Agent has no option for it.
    """

    noisy = False


def agentFetch(reactor: IReactorTime) -> Fetch:
    """
    Send OCSP requests with Twisted's L{Agent}: by GET when the URL, with
    the encoded request, is under 255 bytes (RFC 6960 A.1, RFC 5019 2.1.1:
    cacheable), else by POST.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietHTTP11ClientFactory
    agent = Agent(reactor, pool=pool)

    def fetch(url: str, request: bytes) -> Deferred[bytes]:
        encoded = quote(base64.b64encode(request).decode("ascii"), safe="")
        getURL = f"{url.rstrip('/')}/{encoded}"
        if len(getURL) < _GET_LIMIT:
            answer = agent.request(b"GET", getURL.encode())
        else:
            answer = agent.request(
                b"POST",
                url.encode(),
                Headers({b"content-type": [b"application/ocsp-request"]}),
                FileBodyProducer(BytesIO(request)),
            )
        return answer.addCallback(_body)

    return fetch


def _body(response: IResponse) -> Deferred[bytes]:
    if response.length is not UNKNOWN_LENGTH and response.length > MAX_ANSWER:
        response.deliverBody(Protocol())  # discarded
        raise _Unusable(f"an answer of {response.length} bytes")
    body = readBody(response)
    if response.code != 200:
        # Read it all (the connection closes cleanly), then say why.
        def status(_: bytes) -> bytes:
            raise ConnectionError(f"HTTP status {response.code}")

        return body.addCallback(status)
    return body


def _certificateID(
    certificate: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> ocsp.OCSPRequest:
    return ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, algorithm).build()


def _checkSignature(signer: x509.Certificate, answer: ocsp.OCSPResponse) -> None:
    """
    Check that C{signer}'s key signed C{answer} (cryptography parses OCSP
    answers but does not verify them).
    """
    key = signer.public_key()
    data, signature = answer.tbs_response_bytes, answer.signature
    try:
        if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
            return
        algorithm = answer.signature_hash_algorithm
        if algorithm is None:
            raise _Unusable("signed with no hash algorithm")
        if isinstance(key, rsa.RSAPublicKey):
            scheme: padding.AsymmetricPadding = (
                padding.PSS(padding.MGF1(algorithm), padding.PSS.AUTO)
                if answer.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
                else padding.PKCS1v15()
            )
            key.verify(signature, data, scheme, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise _Unusable("signed with a key of an unsupported type")
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        raise _Unusable("its signature does not verify") from None


def _names(answer: ocsp.OCSPResponse, certificate: x509.Certificate) -> bool:
    """
    @return: whether the answer's responder ID names C{certificate}.
    """
    if answer.responder_name is not None:
        return answer.responder_name == certificate.subject
    digest = x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    return answer.responder_key_hash == digest


def _signer(
    answer: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime
) -> x509.Certificate:
    """
    The certificate whose key must have signed C{answer}: the issuer
    itself, or a responder certificate it issued for OCSP signing (RFC
    6960 4.2.2.2), valid now.
    """
    if _names(answer, issuer):
        return issuer
    for candidate in answer.certificates:
        if not _names(answer, candidate):
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
            usage = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        except x509.ExtensionNotFound:
            continue
        if (
            ExtendedKeyUsageOID.OCSP_SIGNING in usage
            and candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc
        ):
            return candidate
    raise _Unusable("signed by neither the CA nor a responder it delegated")


def readAnswer(
    data: bytes,
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    nonce: bytes | None,
    now: datetime.datetime,
) -> tuple[str, datetime.datetime | None]:
    """
    Verify a responder's answer about C{certificate}.

    @param nonce: the nonce sent, which the answer must echo if it has one.
    @return: the status (C{good}, C{revoked}, C{unknown}) and the
        answer's nextUpdate.
    @raise _Unusable: if it cannot be relied on.
    """
    try:
        answer = ocsp.load_der_ocsp_response(data)
    except ValueError as e:
        raise _Unusable(f"malformed answer: {e}") from None
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _Unusable(f"answered {answer.response_status.name}")
    try:
        single = next(s for s in answer.responses if _about(s, certificate, issuer))
    except StopIteration:
        raise _Unusable("no answer about this certificate") from None
    _checkSignature(_signer(answer, issuer, now), answer)
    try:
        echoed = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        echoed = None
    if echoed is not None and echoed != nonce:
        raise _Unusable("the nonce is not the one sent")
    if single.this_update_utc > now + LEEWAY:
        raise _Unusable(f"thisUpdate {single.this_update_utc:%Y-%m-%d %H:%M:%S}Z is in the future")
    nextUpdate = single.next_update_utc
    if nextUpdate is not None and nextUpdate < now - LEEWAY:
        raise _Unusable(f"stale answer: nextUpdate {nextUpdate:%Y-%m-%d %H:%M:%S}Z has passed")
    status = {
        ocsp.OCSPCertStatus.GOOD: "good",
        ocsp.OCSPCertStatus.REVOKED: "revoked",
        ocsp.OCSPCertStatus.UNKNOWN: "unknown",
    }[single.certificate_status]
    return status, nextUpdate


def _about(
    single: ocsp.OCSPSingleResponse, certificate: x509.Certificate, issuer: x509.Certificate
) -> bool:
    if single.serial_number != certificate.serial_number:
        return False
    try:
        expected = _certificateID(certificate, issuer, single.hash_algorithm)
    except (UnsupportedAlgorithm, ValueError):
        return False
    return (single.issuer_name_hash, single.issuer_key_hash) == (
        expected.issuer_name_hash,
        expected.issuer_key_hash,
    )


def checkResponderURL(url: str, option: str = "--ocsp-responder") -> str:
    """
    @return: C{url}, an C{http:} or C{https:} URL with a host.
    @raise ConfigurationError: for anything else.
    """
    try:
        parsed = urlsplit(url)
        usable = parsed.scheme in ("http", "https") and bool(parsed.hostname)
        parsed.port  # noqa: B018  (raises for a port out of range)
    except ValueError:
        usable = False
    if not usable:
        raise ConfigurationError(
            f"{option} {url!r} is not an http:// or https:// URL of an OCSP responder."
        )
    return url


@frozen
class OCSPSettings:
    """
    How client certificates are checked with OCSP (see L{OCSPChecker}).

    @ivar responder: the responder of every certificate (L{None}: the one
        each names in its Authority Information Access).
    @ivar checkChain: check the intermediates too.
    @ivar timeout: seconds to wait for an answer.
    @ivar required: refuse clients whose status is not known to be good.
    @ivar cacheSeconds: the longest an answer is cached (L{None}: until its
        nextUpdate, or L{CACHE_SECONDS} without one).
    """

    responder: str | None = None
    checkChain: bool = False
    timeout: float = DEFAULT_OCSP_TIMEOUT
    required: bool = False
    cacheSeconds: float | None = None

    def checker(self, reactor: IReactorTime, service: str | None = None) -> OCSPChecker:
        """
        @return: a checker asking responders through C{reactor}, for the
            daemon's C{service}.
        """
        return OCSPChecker(
            reactor,
            agentFetch(reactor),
            responder=self.responder,
            checkChain=self.checkChain,
            timeout=self.timeout,
            required=self.required,
            cacheSeconds=self.cacheSeconds,
            service=service,
        )


class OCSPChecker:
    """
    Check client certificates with their CA's OCSP responder: an
    L{AdmissionCheck} (and L{Rechecking}: live sessions are checked again
    as cached answers expire).

    The leaf is checked (with C{checkChain}, its intermediates too) with the
    responder its Authority Information Access names, or C{responder}.
    Concurrent handshakes of one certificate share one request; answers are
    cached until their nextUpdate (at most C{cacheSeconds}), for at most
    C{maxCached} certificates.  A responder that fails is not asked again
    for L{RETRY_SECONDS}; one warning says so, until it answers again.
    """

    def __init__(
        self,
        clock: IReactorTime,
        fetch: Fetch,
        *,
        responder: str | None = None,
        checkChain: bool = False,
        timeout: float = DEFAULT_OCSP_TIMEOUT,
        required: bool = False,
        cacheSeconds: float | None = None,
        maxCached: int = MAX_CACHED,
        service: str | None = None,
    ) -> None:
        self._serviceField = serviceField(service)
        self._clock = clock
        self._fetch = fetch
        self._responder = responder
        self._checkChain = checkChain
        self._timeout = timeout
        self._required = required
        self._cacheSeconds = cacheSeconds
        self._maxCached = maxCached
        self._cache: dict[bytes, _Status] = {}
        self._waiting: dict[bytes, list[Deferred[_Status]]] = {}
        self._failing: dict[str, float] = {}  # responder -> when to ask it again
        self._recheckAt = math.inf

    def __call__(
        self, certificate: x509.Certificate, path: Sequence[x509.Certificate]
    ) -> Verdict | Deferred[Verdict]:
        """
        The OCSP verdict on a client presenting C{certificate}, issued
        through C{path}.
        """
        chain = [certificate, *path]
        members = chain[:-1] if self._checkChain else chain[:1]
        statuses = [
            self._statusOf(member, chain[number + 1])
            for number, member in enumerate(members)
            if number + 1 < len(chain)
        ]
        if not any(isinstance(status, Deferred) for status in statuses):
            return self._verdict(certificate, statuses)  # type: ignore[arg-type]
        waiting = gatherResults(
            [status if isinstance(status, Deferred) else succeed(status) for status in statuses],
            consumeErrors=True,
        )
        return waiting.addCallback(lambda known: self._verdict(certificate, known))

    def recheckDue(self) -> bool:
        """
        @return: whether a cached answer expired since the last call (its
            expired answers are then forgotten).
        """
        now = self._clock.seconds()
        if now < self._recheckAt:
            return False
        self._cache = {key: s for key, s in self._cache.items() if s.until > now}
        self._recheckAt = min((s.until for s in self._cache.values()), default=math.inf)
        return True

    def _verdict(self, certificate: x509.Certificate, statuses: list[_Status]) -> Verdict:
        found = {status.status for status in statuses}
        if "revoked" in found:
            return refusal(certificate, OCSP_REVOKED, _ERR_CERT_REVOKED)
        if self._required and "unavailable" in found:
            return refusal(certificate, OCSP_UNAVAILABLE)
        if self._required and found - {"good"}:
            return refusal(certificate, OCSP_UNKNOWN)
        worst = next((s.status for s in statuses if s.status != "good"), "good")
        return Admitted(f"ocsp={worst}") if statuses else None

    def _statusOf(
        self, certificate: x509.Certificate, issuer: x509.Certificate
    ) -> _Status | Deferred[_Status]:
        now = self._clock.seconds()
        url = self._responder or responderOf(certificate)
        if url is None:
            return _Status("no-responder", now)
        key = certificate.fingerprint(hashes.SHA256())
        cached = self._cache.get(key)
        if cached is not None and cached.until > now:
            emit(
                log, "ocsp-cache-hit", **self._serviceField, serial=f"{certificate.serial_number:x}"
            )
            return cached
        if self._failing.get(url, -math.inf) > now:
            return _Status("unavailable", now)
        waiter: Deferred[_Status] = Deferred()
        if key in self._waiting:
            self._waiting[key].append(waiter)
            return waiter
        self._waiting[key] = [waiter]
        nonce = os.urandom(16)
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(certificate, issuer, hashes.SHA1())
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        asked = maybeDeferred(self._fetch, url, request)
        # Agent reports a cancelled request in its own wrapping: say "timed
        # out" whatever the cancellation gave.
        asked.addTimeout(
            self._timeout, self._clock, lambda result, timeout: Failure(DeferredTimeout())
        )
        answered: Deferred[_Status] = asked.addCallbacks(
            self._answered,
            self._unanswered,
            callbackArgs=(url, certificate, issuer, nonce),
            errbackArgs=(url, certificate),
        )
        answered.addErrback(self._broken, url, certificate)
        answered.addCallback(self._settle, key)
        return waiter

    def _answered(
        self,
        data: bytes,
        url: str,
        certificate: x509.Certificate,
        issuer: x509.Certificate,
        nonce: bytes,
    ) -> _Status:
        now = self._clock.seconds()
        serial = f"{certificate.serial_number:x}"
        try:
            status, nextUpdate = readAnswer(
                data,
                certificate,
                issuer,
                nonce,
                datetime.datetime.fromtimestamp(now, datetime.timezone.utc),
            )
        except Exception as e:  # _Unusable, or whatever else cannot be read
            self._failed(
                url,
                str(e) if isinstance(e, _Unusable) else f"unreadable answer: {e}",
                "invalid",
                serial,
            )
            return _Status("unknown", now)
        emit(log, "ocsp-answer", **self._serviceField, responder=url, result=status, serial=serial)
        if self._failing.pop(url, None) is not None:
            emit(log, "ocsp-available", **self._serviceField, responder=url)
        life = CACHE_SECONDS if nextUpdate is None else nextUpdate.timestamp() - now
        if self._cacheSeconds is not None:
            life = min(life, self._cacheSeconds)
        return _Status(status, now + max(life, 0.0))

    def _unanswered(self, failure: Failure, url: str, certificate: x509.Certificate) -> _Status:
        if failure.check(DeferredTimeout):
            error = f"no answer within {self._timeout:g}s"
        else:
            error = failure.getErrorMessage() or failure.type.__name__  # type: ignore[union-attr]
        self._failed(url, error, "unavailable", f"{certificate.serial_number:x}")
        return _Status("unavailable", self._clock.seconds())

    def _broken(self, failure: Failure, url: str, certificate: x509.Certificate) -> _Status:
        """
        Whatever else went wrong (a bug): logged, and the status unknown,
        so that the clients waiting are decided.
        """
        log.failure("OCSP check of {responder} failed", failure, responder=url)
        return _Status("unknown", self._clock.seconds())

    def _failed(self, url: str, error: str, result: str, serial: str) -> None:
        emit(
            log,
            "ocsp-answer",
            **self._serviceField,
            responder=url,
            result=result,
            serial=serial,
            error=error,
        )
        if url not in self._failing:
            emit(
                log,
                "ocsp-unavailable",
                **self._serviceField,
                responder=url,
                error=error,
                then="refusing clients" if self._required else "admitting clients unchecked",
            )
        self._failing[url] = self._clock.seconds() + RETRY_SECONDS

    def _settle(self, status: _Status, key: bytes) -> None:
        if status.until > self._clock.seconds():
            self._cache.pop(key, None)
            self._cache[key] = status
            if len(self._cache) > self._maxCached:
                del self._cache[next(iter(self._cache))]
            self._recheckAt = min(self._recheckAt, status.until)
        for waiter in self._waiting.pop(key, []):
            if not waiter.called:
                waiter.callback(status)
