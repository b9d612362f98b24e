# -*- test-case-name: mtlsd.test.test_admission -*-
"""
Who gets in: for a client whose certificate OpenSSL verified, the one
object that decides under one generation of trust settings, in every
situation a client is judged in.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Protocol, TypeAlias, runtime_checkable
from weakref import WeakKeyDictionary

from attrs import frozen
from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import (
    FILETYPE_ASN1,
    X509,
    X509Store,
    X509StoreContext,
    X509StoreContextError,
    X509StoreFlags,
    dump_certificate,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ._identity import PeerIdentity, identityFromCertificate
from ._policy import ALLOW_KINDS, AllowPolicy
from ._reasons import ISSUER_NOT_CA, NO_LONGER_TRUSTED, NOT_ALLOWED, REVOKED, verifyErrorText
from ._sessions import LiveSession, SessionRegistry
from ._settings import ServerTLSSettings
from ._verify import VerifyFailure, subjectOf

_Codes = SSL.X509VerificationCodes
log = Logger(namespace="mtlsd")


@frozen
class Admitted:
    """
    A further check's admission, with what it found: C{note} (such as
    C{ocsp=good}) is added to the client's C{accepted} event.
    """

    note: str


Verdict: TypeAlias = VerifyFailure | Admitted | None
"""
What L{Admission} decides: L{None} (or an L{Admitted} note) admits; a
L{VerifyFailure} refuses, with the reason, the log fields, and the X.509
error whose alert the client gets.
"""

Refusal: TypeAlias = VerifyFailure | None

AdmissionCheck = Callable[
    [x509.Certificate, Sequence[x509.Certificate]], "Verdict | Deferred[Verdict]"
]
"""
A further check of a client after its handshake (OCSP, say): given its
certificate and the chain above it that OpenSSL verified (its issuer first,
up to the trust anchor; empty for a certificate trusted as itself), a
verdict now or later.  The same check is asked again about live sessions
when it says so (see L{Rechecking}): a refusal for a revoked certificate
(C{X509_V_ERR_CERT_REVOKED}) then cuts the session.
"""


@runtime_checkable
class Rechecking(Protocol):
    """
    An L{AdmissionCheck} whose verdicts expire (cached OCSP answers, say):
    asked on each reload tick whether the live sessions are due for another
    look.
    """

    def __call__(
        self, certificate: x509.Certificate, path: Sequence[x509.Certificate]
    ) -> Verdict | Deferred[Verdict]: ...

    def recheckDue(self) -> bool:
        """
        @return: whether a verdict given since the last recheck has expired.
        """


_NEVER = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)


def identityFields(identity: PeerIdentity) -> tuple[tuple[str, object], ...]:
    """
    The log fields naming a client: what an allow-list entry can match.
    """
    return tuple((kind.identity, getattr(identity, kind.identity)) for kind in ALLOW_KINDS)


def refusal(
    certificate: x509.Certificate, reason: str, errno: int = _Codes.ERR_CERT_REJECTED
) -> VerifyFailure:
    """
    The refusal of a client certificate OpenSSL verified, with the client's
    identity as its log fields.
    """
    try:
        details = identityFields(identityFromCertificate(certificate))
    except Exception:
        details = ()
    return VerifyFailure(errno, 0, subjectOf(certificate), reason, details)


def _policyRefusal(policy: AllowPolicy, certificate: x509.Certificate) -> Refusal:
    """
    Refuse a client the allow-list does not admit, or whose certificate
    cryptography cannot read (fail closed).
    """
    if policy.isEmpty:
        return None
    try:
        identity = identityFromCertificate(certificate)
    except Exception as e:
        return VerifyFailure(
            _Codes.ERR_CERT_REJECTED,
            0,
            subjectOf(certificate),
            f"unreadable client certificate: {e}",
        )
    return None if policy.allows(identity) else refusal(certificate, NOT_ALLOWED)


class Admission:
    """
    The decision of who gets in under one generation of settings (built
    again for each), in every situation:

     - the full handshake, in OpenSSL's verify step (L{verifyStep}), so
       that a refusal reaches the client as a TLS alert: a certificate of
       the bundle that may not issue above the leaf, the allow-list, and a
       trust change since the handshake began;
     - after the handshake (L{afterHandshake}): a resumed session (which
       sends no certificate), a trust change since the verify step, and the
       further checks, which may answer later (a L{Deferred});
     - a live session after a reload (L{decide}) and as time passes
       (L{expired}).

    L{decide} verifies the chain again (OpenSSL, with the settings' trust
    and without CRLs), looks the verified chain up in the CRLs with the
    handshake's semantics (the leaf, or every CA's certificate with
    C{crlCheckChain}; an issuer without a CRL is not checked unless
    C{crlRequired}), then applies the issuer rule and the allow-list.
    """

    def __init__(self, settings: ServerTLSSettings, checks: Sequence[AdmissionCheck] = ()) -> None:
        """
        @param checks: further checks of each client after its handshake.
        """
        self.settings = settings
        self._checks = tuple(checks)
        self._policy = settings.policy
        self._nonIssuers = settings.nonIssuers
        self._store = X509Store()
        for trusted in settings.anchors:
            self._store.add_cert(X509.from_cryptography(trusted))
        self._store.set_flags(X509StoreFlags.PARTIAL_CHAIN)
        self._crls = {crl.issuer: crl for crl in settings.usableCRLs}
        # Until then nothing that time alone changes (a trusted certificate
        # expiring, a CRL passing its nextUpdate) can refuse anyone.
        self._steadyUntil = min(
            [c.not_valid_after_utc for c in settings.anchors]
            + [c.next_update_utc for c in settings.usableCRLs if c.next_update_utc is not None],
            default=_NEVER,
        )
        # Per connection, while its chain is verified: the first trusted
        # certificate found above the leaf that may not issue; the chain of
        # a handshake that began under these settings, replaced since.
        self._issuedThrough: WeakKeyDictionary[SSL.Connection, VerifyFailure] = WeakKeyDictionary()
        self._chains: WeakKeyDictionary[SSL.Connection, list[x509.Certificate]] = (
            WeakKeyDictionary()
        )

    def verifyStep(
        self, connection: SSL.Connection, certificate: X509, depth: int, inForce: Admission
    ) -> Refusal:
        """
        Judge a certificate OpenSSL verified in a full handshake begun under
        these settings.  OpenSSL asks for each certificate of the chain it
        built, from the trust anchor down to the leaf (depth 0), whose answer
        is the verdict.

        @param inForce: the admission in force now, which decides if it is
            not this one (the trust changed since the handshake began).
        """
        if inForce is not self:
            chain = self._chains.setdefault(connection, [])
            chain.insert(0, certificate.to_cryptography())
            return inForce.decide(chain[0], chain[1:]) if depth == 0 else None
        if depth:
            if (
                self._nonIssuers
                and dump_certificate(FILETYPE_ASN1, certificate) in self._nonIssuers
            ):
                self._issuedThrough.setdefault(
                    connection,
                    VerifyFailure(
                        _Codes.ERR_INVALID_CA, depth, subjectOf(certificate), ISSUER_NOT_CA
                    ),
                )
            return None
        verdict = self._issuedThrough.get(connection)
        if verdict is None and not self._policy.isEmpty:
            verdict = _policyRefusal(self._policy, certificate.to_cryptography())
        return verdict

    def afterHandshake(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        resumed: bool,
        startedUnder: Admission,
        now: datetime.datetime,
    ) -> Verdict | Deferred[Verdict]:
        """
        Decide for a client whose handshake completed.

        @param chain: the intermediates it sent (for a resumed session,
            those of its last full handshake).
        @param resumed: whether the session was resumed.
        @param startedUnder: the admission in force when the handshake began.
        @return: the verdict, or a L{Deferred} firing with it when a further
            check answers later.
        """
        if startedUnder is not self:
            verdict = self.decide(certificate, chain, now)
        elif resumed:
            verdict = self.resumed(certificate, chain, now)
        else:
            verdict = None
        if verdict is not None or not self._checks:
            return verdict
        return self._furtherChecks(certificate, self._path(certificate, chain), self._checks, ())

    def _path(
        self, certificate: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> list[x509.Certificate]:
        """
        The chain above C{certificate} that the trust in force verifies, its
        issuer first (the sent intermediates if it does not).
        """
        verified = self._verifiedChain(certificate, chain)
        if verified is None:
            return list(chain)
        return [c.to_cryptography() for c in verified[1:]] or list(chain)

    def _verifiedChain(
        self, certificate: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> list[X509] | None:
        """
        The chain OpenSSL builds from C{certificate} to a trusted
        certificate (without CRLs), or L{None} if there is none.
        """
        try:
            return X509StoreContext(
                self._store,
                X509.from_cryptography(certificate),
                [X509.from_cryptography(c) for c in chain],
            ).get_verified_chain()
        except X509StoreContextError:
            return None

    def _furtherChecks(
        self,
        certificate: x509.Certificate,
        path: Sequence[x509.Certificate],
        checks: tuple[AdmissionCheck, ...],
        notes: tuple[str, ...],
    ) -> Verdict | Deferred[Verdict]:
        """
        Run C{checks} one after the other until one refuses; the notes of
        those that admit are kept.
        """
        for number, check in enumerate(checks):
            verdict = check(certificate, path)
            if isinstance(verdict, Deferred):
                return verdict.addCallback(
                    self._thenFurther, certificate, path, checks[number + 1 :], notes
                )
            if isinstance(verdict, VerifyFailure):
                return verdict
            if verdict is not None:
                notes += (verdict.note,)
        return Admitted(" ".join(notes)) if notes else None

    def _thenFurther(
        self,
        verdict: Verdict,
        certificate: x509.Certificate,
        path: Sequence[x509.Certificate],
        checks: tuple[AdmissionCheck, ...],
        notes: tuple[str, ...],
    ) -> Verdict | Deferred[Verdict]:
        if isinstance(verdict, VerifyFailure):
            return verdict
        if verdict is not None:
            notes += (verdict.note,)
        return self._furtherChecks(certificate, path, checks, notes)

    def recheck(self, sessions: SessionRegistry) -> None:
        """
        Ask the further checks again about every live session, and cut
        those whose certificate they find revoked (a check that cannot
        answer cuts no one).
        """
        for session in sessions:
            certificate, chain = session.peer()
            verdict = self._furtherChecks(
                certificate, self._path(certificate, chain), self._checks, ()
            )
            if isinstance(verdict, Deferred):
                verdict.addCallback(self._cutIfRevoked, session, sessions)
                verdict.addErrback(lambda failure: log.failure("rechecking a session", failure))
            else:
                self._cutIfRevoked(verdict, session, sessions)

    @staticmethod
    def _cutIfRevoked(verdict: Verdict, session: LiveSession, sessions: SessionRegistry) -> None:
        if (
            isinstance(verdict, VerifyFailure)
            and verdict.errno == _Codes.ERR_CERT_REVOKED
            and session in sessions
        ):
            session.cut(verdict.reason)

    def resumed(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime,
    ) -> Refusal:
        """
        Decide for a session resumed under the settings that verified it in
        full: only time can have changed the verdict (the ticket was issued
        by these settings' context; tickets are renewed at each resumption).
        Its certificate may have expired since; else cheap while no trusted
        certificate, no CRL and none of the client's intermediates has
        reached its end, and decided in full after that.
        """
        if certificate.not_valid_after_utc < now:
            return refusal(
                certificate,
                verifyErrorText(_Codes.ERR_CERT_HAS_EXPIRED),
                _Codes.ERR_CERT_HAS_EXPIRED,
            )
        if now < self._steadyUntil and all(c.not_valid_after_utc >= now for c in chain):
            return None
        return self.decide(certificate, chain, now)

    def expired(self, notAfter: datetime.datetime, now: datetime.datetime) -> Refusal:
        """
        Decide for a live session whose client certificate ends at
        C{notAfter}: admitted while it is valid.
        """
        if notAfter >= now:
            return None
        return VerifyFailure(_Codes.ERR_CERT_HAS_EXPIRED, 0, "?", NO_LONGER_TRUSTED)

    def decide(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime | None = None,
    ) -> Refusal:
        """
        Decide in full for a client presenting C{certificate} and C{chain}
        (the intermediates it sent), as of C{now} (default: now).
        """
        settings = self.settings
        verified = self._verifiedChain(certificate, chain)
        if verified is None:
            return refusal(certificate, NO_LONGER_TRUSTED)
        for depth, above in enumerate(verified[1:], 1):
            if self._nonIssuers and dump_certificate(FILETYPE_ASN1, above) in self._nonIssuers:
                return VerifyFailure(_Codes.ERR_INVALID_CA, depth, subjectOf(above), ISSUER_NOT_CA)
        if settings.checksRevocation:
            path = [c.to_cryptography() for c in verified]
            checked = path if settings.crlCheckChain else path[:1]
            now = now or datetime.datetime.now(datetime.timezone.utc)
            for number, member in enumerate(checked):
                if number and member.issuer == member.subject:
                    break  # the root: a trust anchor, never on a CRL
                crl = self._crls.get(member.issuer)
                if crl is None:
                    if settings.crlRequired:
                        return refusal(certificate, NO_LONGER_TRUSTED)
                    continue
                if crl.get_revoked_certificate_by_serial_number(member.serial_number):
                    return refusal(certificate, REVOKED, _Codes.ERR_CERT_REVOKED)
                if crl.next_update_utc is not None and crl.next_update_utc < now:
                    return refusal(certificate, NO_LONGER_TRUSTED)
        return _policyRefusal(self._policy, certificate)
