# -*- test-case-name: mtlsd.test.test_server -*-
"""
Server TLS settings and the one place that turns them into an OpenSSL
context, through Twisted's L{CertificateOptions}.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast
from weakref import WeakKeyDictionary

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
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
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolNegotiationFactory,
)
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from ._errors import ConfigurationError
from ._files import Path, keyFileWarnings, loadCertificateAndKey, loadCertificates, loadCRLs
from ._identity import PeerIdentity, identityFromCertificate
from ._openssl import setVerify
from ._policy import AllowPolicy
from ._reasons import ISSUER_NOT_CA, NO_LONGER_TRUSTED, NOT_ALLOWED, REVOKED, verifyErrorText

_UNABLE_TO_GET_CRL = SSL.X509VerificationCodes.ERR_UNABLE_TO_GET_CRL
_INVALID_CA = SSL.X509VerificationCodes.ERR_INVALID_CA
_CERT_REJECTED = SSL.X509VerificationCodes.ERR_CERT_REJECTED

# TLS 1.2 cipher suites: Mozilla's "intermediate" list (ssl-config.mozilla.org,
# version 5.7): forward secrecy and AEAD only.  Twisted's default also admits
# CBC and CCM suites.  TLS 1.3 suites are OpenSSL's (all three are in it).
_INTERMEDIATE_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)

DEFAULT_VERIFY_DEPTH = 4
TLS_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}
CRL_WARNING_AHEAD = datetime.timedelta(days=1)
KNOWN_CHAINS = 4096
TICKET_LIMIT = 32 * 1024  # client certificates larger get no session ticket


def _positive(instance: object, attribute: object, value: int) -> None:
    if value < 1:
        raise ValueError(f"verify depth must be at least 1, not {value}")


def _tlsVersion(instance: object, attribute: object, value: str) -> None:
    if value not in TLS_VERSIONS:
        raise ConfigurationError(f"--tls-min-version must be 1.2 or 1.3, not {value!r}.")


def _isCA(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def isIssuingCA(certificate: x509.Certificate) -> bool:
    """
    Whether a certificate is a CA by intent: C{basicConstraints CA:TRUE} and
    a keyUsage that asserts keyCertSign.  C{openssl req -x509}, the classic
    recipe's command, makes every certificate C{CA:TRUE} without a keyUsage:
    such a certificate, listed as a client's, must not admit what its key
    signs.
    """
    try:
        if not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
        return certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return False


def _limitedScope(crl: x509.CertificateRevocationList) -> bool:
    """
    Whether a CRL covers less than all revocations of its issuer (a delta
    CRL, or one limited to some reasons).
    """
    for extension in crl.extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            return True
        if isinstance(extension.value, x509.IssuingDistributionPoint) and (
            extension.value.only_some_reasons is not None
        ):
            return True
    return False


def _subject(name: x509.Name) -> str:
    return name.rfc4514_string()


def _describeBundle(
    path: Path, clients: Sequence[x509.Certificate], cas: Sequence[x509.Certificate]
) -> str:
    """
    What a trust file makes trusted, in one sentence: how many client
    certificates (each admits itself) and which issuing CAs.
    """
    issuers = [c for c in clients if isIssuingCA(c)]
    count = len(clients) - len(issuers)
    issuers += cas
    plural = "" if count == 1 else "s"
    named = "; ".join(_subject(c.subject) for c in issuers) or "none"
    return f"{path}: {count} client certificate{plural}; issuing CAs: {named}"


@frozen
class ServerTLSSettings:
    """
    What a mutual-TLS server needs: its certificate, chain and key, the
    client certificates and CAs it trusts, revocation lists and who of the
    verified clients may in.

    @ivar certificate: the server's certificate.
    @ivar privateKey: its private key.
    @ivar chain: intermediate certificates sent after it.
    @ivar trusted: trusted client certificates and CA certificates
        (C{--client-certs}).  A client is accepted when its certificate is one
        of them, or is issued by one that is a CA by intent (L{isIssuingCA}).
    @ivar crls: certificate revocation lists.  With any, the client
        certificate is checked against its issuer's CRL; a CA with no CRL
        here is not checked unless C{crlRequired}.
    @ivar crlCheckChain: check every CA of the chain, not just the leaf.
    @ivar crlRequired: reject clients whose issuer has no CRL here.
    @ivar policy: the allow-list verified clients must match.
    @ivar verifyDepth: the longest client chain accepted (OpenSSL's verify
        depth: a leaf, up to this many intermediates, and the root).
    @ivar minimumTLSVersion: C{"1.2"} or C{"1.3"}.
    @ivar clientCAs: certificates trusted as issuing CAs whatever their
        keyUsage says (C{--client-ca}).
    @ivar bundles: one sentence per trust file read by L{fromFiles}: how many
        client certificates it holds and which CAs it trusts to issue them,
        for the daemon to log.  No part in comparisons.
    @ivar fileWarnings: sentences about the files the settings were read
        from (a private key or passphrase readable by group or others),
        found by L{fromFiles} for the daemon to log.  They are not part of
        L{warnings} and take no part in comparisons.
    """

    certificate: x509.Certificate
    privateKey: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()
    trusted: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    crlCheckChain: bool = False
    crlRequired: bool = False
    policy: AllowPolicy = AllowPolicy()
    verifyDepth: int = field(default=DEFAULT_VERIFY_DEPTH, validator=_positive)
    minimumTLSVersion: str = field(default="1.2", validator=_tlsVersion)
    clientCAs: tuple[x509.Certificate, ...] = ()
    bundles: tuple[str, ...] = field(default=(), eq=False)
    fileWarnings: tuple[str, ...] = field(default=(), eq=False)

    @classmethod
    def fromFiles(
        cls,
        certificatePath: Path,
        keyPath: Path | None,
        clientCertificatePaths: Sequence[Path],
        crlPaths: Sequence[Path] = (),
        passphrasePath: Path | None = None,
        clientCAPaths: Sequence[Path] = (),
        **options: Any,
    ) -> ServerTLSSettings:
        """
        Load settings from files.

        @param certificatePath: the server certificate (PEM), optionally
            followed by its chain and/or its key; or a PKCS#12 file with the
            key, the certificate and its chain.
        @param keyPath: the server's key (PEM), or L{None} for the key
            inside C{certificatePath}.
        @param clientCertificatePaths: bundles of trusted client certificates
            and/or CA certificates (PEM).
        @param crlPaths: CRLs (PEM or DER).
        @param passphrasePath: a file whose first line is the passphrase of
            an encrypted key or the password of the PKCS#12 file.
        @param clientCAPaths: bundles of certificates trusted as issuing CAs
            whatever their keyUsage (PEM).
        @param options: the other attributes (C{policy}, C{verifyDepth}, ...).
        @raise ConfigurationError: for any unusable file, a passphrase that
            does not open the key, or a key that does not match the
            certificate.
        """
        server = loadCertificateAndKey(certificatePath, keyPath, "server", passphrasePath)
        if not clientCertificatePaths and not clientCAPaths:
            raise ConfigurationError("no trusted client certificates were given.")
        bundles, trusted, clientCAs = [], [], []
        for path in clientCertificatePaths:
            certificates = loadCertificates(path, "client certificates")
            trusted += certificates
            bundles.append(_describeBundle(path, certificates, ()))
        for path in clientCAPaths:
            certificates = loadCertificates(path, "client CA")
            clientCAs += certificates
            bundles.append(_describeBundle(path, (), certificates))
        crls = [crl for p in crlPaths for crl in loadCRLs(p)]
        fileWarnings = keyFileWarnings(server.keyPath, "the server's private key")
        if passphrasePath is not None:
            fileWarnings += keyFileWarnings(passphrasePath, "the server key's passphrase")
        return cls(
            server.certificate,
            server.privateKey,
            server.chain,
            tuple(trusted),
            tuple(crls),
            **options,
            clientCAs=tuple(clientCAs),
            bundles=tuple(bundles),
            fileWarnings=tuple(fileWarnings),
        )

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        """
        Every trusted certificate: the client certificates and CAs of
        L{trusted}, and the L{clientCAs}.
        """
        return self.trusted + self.clientCAs

    @property
    def issuers(self) -> tuple[x509.Certificate, ...]:
        """
        The trusted certificates that admit what they sign: the CAs by intent
        of L{trusted}, and the L{clientCAs}.
        """
        return tuple(c for c in self.trusted if isIssuingCA(c)) + self.clientCAs

    @property
    def nonIssuers(self) -> frozenset[bytes]:
        """
        The DER of the trusted certificates that admit only themselves: those
        of L{trusted} that are not CAs by intent (and not L{clientCAs}).
        """
        issuers = set(self.issuers)
        return frozenset(
            c.public_bytes(serialization.Encoding.DER) for c in self.trusted if c not in issuers
        )

    @property
    def usableCRLs(self) -> tuple[x509.CertificateRevocationList, ...]:
        """
        The CRLs that are used: those signed by a trusted CA.  A CRL of a
        CA that is not in the bundle cannot be checked (its signature needs
        the CA); one that does not verify is a mistake.  Both are warned
        about and left out.
        """
        cas = [c for c in self.anchors if _isCA(c)]
        return tuple(
            crl
            for crl in self.crls
            if any(
                ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
                for ca in cas
            )
        )

    @property
    def checksRevocation(self) -> bool:
        """
        Whether OpenSSL checks client certificates against CRLs.
        """
        return bool(self.usableCRLs) or self.crlRequired

    def warnings(self, now: datetime.datetime | None = None) -> list[str]:
        """
        @return: sentences about settings that work but may not do what is
            wanted: a server certificate out of its validity, a CRL past or
            near its nextUpdate or matching no trusted CA, a trusted CA that
            admits every certificate it issues (no allow-list).
        """
        now = now or datetime.datetime.now(datetime.timezone.utc)
        found = list(self.fileWarnings)
        server = self.certificate
        if server.not_valid_after_utc < now:
            found.append(
                f"the server certificate {_subject(server.subject)} EXPIRED on"
                f" {server.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC: clients will reject it."
            )
        elif server.not_valid_before_utc > now:
            found.append(
                f"the server certificate {_subject(server.subject)} is not valid before"
                f" {server.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC: clients will reject it."
            )
        cas = self.issuers
        usable = self.usableCRLs
        for crl in self.crls:
            issuer = _subject(crl.issuer)
            nextUpdate = crl.next_update_utc
            if crl not in usable:
                found.append(
                    f"the CRL of {issuer} is not signed by a CA of the bundle: it is not used"
                    " (revoke a certificate pinned without its CA by removing it from the bundle)."
                )
            elif _limitedScope(crl):
                found.append(
                    f"the CRL of {issuer} is a delta or partitioned CRL, which OpenSSL does not"
                    " use alone: every client of that CA is rejected; give its complete CRL."
                )
            elif nextUpdate is not None and nextUpdate < now:
                found.append(
                    f"the CRL of {issuer} is past its nextUpdate ({nextUpdate:%Y-%m-%d %H:%M:%S}"
                    " UTC): every client of that CA is rejected until the CRL is renewed."
                )
            elif nextUpdate is not None and nextUpdate < now + CRL_WARNING_AHEAD:
                found.append(
                    f"the CRL of {issuer} reaches its nextUpdate at {nextUpdate:%Y-%m-%d %H:%M:%S}"
                    " UTC: after that every client of that CA is rejected; renew it."
                )
        for ca in cas:
            if self.crlRequired and not any(crl.issuer == ca.subject for crl in self.crls):
                found.append(
                    f"--crl-required and no CRL for CA {_subject(ca.subject)}: every client"
                    " of that CA is rejected."
                )
            if self.policy.isEmpty:
                found.append(
                    f"every certificate issued by CA {_subject(ca.subject)} is admitted; use"
                    " --allow-* options to admit only some."
                )
        return found


@frozen
class VerifyFailure:
    """
    Why OpenSSL rejected a peer's certificate chain.

    @ivar errno: the C{X509_V_ERR_*} code.
    @ivar depth: the chain position of the failing certificate (0: leaf).
    @ivar subject: that certificate's subject (RFC 4514).
    """

    errno: int
    depth: int
    subject: str
    text: str | None = None
    details: tuple[tuple[str, object], ...] = ()

    @property
    def reason(self) -> str:
        """
        mtlsd's reason when mtlsd refused a chain OpenSSL accepted (C{text}),
        else OpenSSL's text for the error, e.g. C{certificate has expired}.
        """
        return self.text or verifyErrorText(self.errno)

    @property
    def fields(self) -> dict[str, object]:
        """
        The log fields of the refusal: the identity of a client the policy
        refused, else the depth and subject of the failing certificate.
        """
        return dict(self.details) or {"depth": self.depth, "subject": self.subject}


class VerifyRecorder:
    """
    Remembers, per OpenSSL connection, the first certificate verification
    error OpenSSL reported, so that a failed handshake can say why.  Its
    L{record} is called from verify callbacks and returns OpenSSL's verdict
    unchanged.
    """

    def __init__(self) -> None:
        self._failures: WeakKeyDictionary[SSL.Connection, VerifyFailure] = WeakKeyDictionary()

    def record(
        self,
        connection: SSL.Connection,
        certificate: X509,
        errno: int,
        depth: int,
        ok: int,
    ) -> bool:
        """
        A verify callback (the signature of L{SSL.Context.set_verify}'s) that
        records a failure and returns C{ok} unchanged.
        """
        if not ok and connection not in self._failures:
            self._failures[connection] = VerifyFailure(errno, depth, _subjectOf(certificate))
        return bool(ok)

    def refuse(self, connection: SSL.Connection, failure: VerifyFailure) -> int:
        """
        Record mtlsd's own refusal of a chain OpenSSL accepted.

        @return: its error code, the verdict for the verify callback to
            return (see L{setVerify}).
        """
        self._failures.setdefault(connection, failure)
        return failure.errno

    def failure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: the verification failure recorded for C{connection}, if any.
        """
        return self._failures.get(connection)


def _subjectOf(certificate: X509 | x509.Certificate) -> str:
    try:
        if isinstance(certificate, X509):
            certificate = certificate.to_cryptography()
        return certificate.subject.rfc4514_string()
    except Exception:  # a certificate cryptography cannot parse
        return "?"


def identityFields(identity: PeerIdentity) -> tuple[tuple[str, object], ...]:
    """
    The log fields naming a client: what an allow-list entry can match.
    """
    return (
        ("commonName", identity.commonName),
        ("fingerprint", identity.fingerprint),
        ("spkiFingerprint", identity.spkiFingerprint),
        ("dnsNames", identity.dnsNames),
        ("uris", identity.uris),
        ("ipAddresses", identity.ipAddresses),
        ("organizationalUnits", identity.organizationalUnits),
    )


def _refusal(certificate: x509.Certificate, reason: str) -> VerifyFailure:
    """
    mtlsd's refusal of a leaf OpenSSL verified, with the client's identity
    as its log fields.
    """
    try:
        details = identityFields(identityFromCertificate(certificate))
    except Exception:
        details = ()
    return VerifyFailure(_CERT_REJECTED, 0, _subjectOf(certificate), reason, details)


def _policyRefusal(policy: AllowPolicy, certificate: x509.Certificate) -> VerifyFailure | None:
    """
    The refusal of a verified client certificate that the allow-list does
    not admit (or that cryptography cannot read: fail closed), or L{None}.
    """
    try:
        identity = identityFromCertificate(certificate)
    except Exception as e:
        return VerifyFailure(
            _CERT_REJECTED,
            0,
            _subjectOf(certificate),
            f"unreadable client certificate: {e}",
        )
    if policy.allows(identity):
        return None
    return _refusal(certificate, NOT_ALLOWED)


class LiveSession(Protocol):
    """
    An established connection, as the context sees it when trust changes.
    """

    peerNotAfter: datetime.datetime
    """
    When its client certificate expires.
    """

    def peer(self) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """
        Its client certificate and the intermediates sent with it.
        """

    def cut(self, reason: str) -> None:
        """
        Close the connection because its peer is no longer admitted.
        """


def _selectALPN(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """
    Choose the application protocol (ALPN) among those the client offers.

    Twisted 26's own callback answers an empty protocol when nothing
    overlaps, which OpenSSL turns into an "internal error" alert: every
    client offering ALPN (curl, browsers) failed against an application
    that negotiates nothing.  Declining is the right answer.
    """
    factory = connection.get_app_data().factory.wrappedFactory
    negotiating = IProtocolNegotiationFactory(factory, None)
    for protocol in negotiating.acceptableProtocols() if negotiating is not None else ():
        if protocol in offered:
            return bytes(protocol)
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _storeFlags(settings: ServerTLSSettings) -> int:
    flags = X509StoreFlags.PARTIAL_CHAIN
    if settings.checksRevocation:
        flags |= X509StoreFlags.CRL_CHECK
        if settings.crlCheckChain:
            flags |= X509StoreFlags.CRL_CHECK_ALL
    return flags


class _Rechecker:
    """
    Decides again, for an established connection, what the handshake
    decided: OpenSSL verifies the chain (as at the handshake, without CRLs)
    and gives the verified chain, whose certificates are then looked up in
    the CRLs with the handshake's semantics (the leaf, or every CA's
    certificate with C{crlCheckChain}; an issuer without a CRL is not checked
    unless C{crlRequired}); then the allow-list.  Built once per settings.
    """

    def __init__(self, settings: ServerTLSSettings) -> None:
        self._settings = settings
        self._store = X509Store()
        for trusted in settings.anchors:
            self._store.add_cert(X509.from_cryptography(trusted))
        self._store.set_flags(X509StoreFlags.PARTIAL_CHAIN)
        self._nonIssuers = settings.nonIssuers
        self._crls = {crl.issuer: crl for crl in settings.usableCRLs}
        # Until then nothing that time alone changes (a trusted certificate
        # expiring, a CRL passing its nextUpdate) can refuse anyone.
        self._steadyUntil = min(
            [c.not_valid_after_utc for c in settings.anchors]
            + [c.next_update_utc for c in settings.usableCRLs if c.next_update_utc is not None],
            default=datetime.datetime.max.replace(tzinfo=datetime.timezone.utc),
        )

    def resumed(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime,
    ) -> str | None:
        """
        Decide again for a session resumed under the settings that verified
        it: only time can have changed the verdict.  Cheap while no trusted
        certificate, no CRL and none of the client's intermediates has
        reached its end; after that, decided in full.
        """
        if now < self._steadyUntil and all(c.not_valid_after_utc >= now for c in chain):
            return None
        return self(certificate, chain, now)

    def __call__(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime | None = None,
    ) -> str | None:
        settings = self._settings
        try:
            verified = X509StoreContext(
                self._store,
                X509.from_cryptography(certificate),
                [X509.from_cryptography(c) for c in chain],
            ).get_verified_chain()
        except X509StoreContextError:
            return NO_LONGER_TRUSTED
        if self._nonIssuers and any(
            dump_certificate(FILETYPE_ASN1, member) in self._nonIssuers for member in verified[1:]
        ):
            return ISSUER_NOT_CA
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
                        return NO_LONGER_TRUSTED
                    continue
                if crl.get_revoked_certificate_by_serial_number(member.serial_number):
                    return REVOKED
                if crl.next_update_utc is not None and crl.next_update_utc < now:
                    return NO_LONGER_TRUSTED
        if not settings.policy.allows(identityFromCertificate(certificate)):
            return NOT_ALLOWED
        return None


@implementer(IOpenSSLServerConnectionCreator)
class ServerContext:
    """
    The server side of mutual TLS: creates the OpenSSL connection for each
    accepted socket, remembers why a client's certificate was rejected, and
    takes new settings while running (L{update}).

    Each context is built by L{CertificateOptions} with C{trustRoot} made from
    the trusted certificates (so Twisted requires and verifies a client
    certificate) and session tickets on (TLS 1.3 resumption: each context
    has ticket keys of its own, so a ticket never outlives the settings that
    verified its client), then completed before any connection uses it:
     - partial-chain verification, so a CA-issued leaf listed alone is
       trusted as a pin;
     - the CRLs and CRL checking;
     - the trusted subjects sent as acceptable client CA names;
     - the verify depth;
     - a verify callback that records OpenSSL's verdict.  It changes one
       verdict only: when the issuer has no CRL here and CRLs are not
       required, "unable to get certificate CRL" is not an error.
    """

    def __init__(self, settings: ServerTLSSettings) -> None:
        self._recorder = VerifyRecorder()
        self.sessions: set[LiveSession] = set()
        self._drainWaiters: list[Deferred[None]] = []
        self._chains: dict[x509.Certificate, tuple[x509.Certificate, ...]] = {}
        self.update(settings)

    def rememberChain(
        self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...]
    ) -> None:
        """
        Note the intermediates a client sent with C{certificate} in a full
        handshake, for L{chainOf}.  The L{KNOWN_CHAINS} most recently used
        are kept.
        """
        if chain:
            self._chains.pop(certificate, None)
            self._chains[certificate] = chain
            if len(self._chains) > KNOWN_CHAINS:
                del self._chains[next(iter(self._chains))]

    def chainOf(self, certificate: x509.Certificate) -> tuple[x509.Certificate, ...]:
        """
        @return: the intermediates last sent with C{certificate}, for a
            resumed session, whose client sends no certificates (the ticket
            holds the leaf only); without them a later L{revalidate} judges
            the leaf alone, which fails closed.
        """
        chain = self._chains.pop(certificate, ())
        if chain:
            self._chains[certificate] = chain  # the most recently used: evicted last
        return chain

    def sessionEnded(self, session: LiveSession) -> None:
        """
        An established connection ended.
        """
        self.sessions.discard(session)
        if not self.sessions:
            waiters, self._drainWaiters = self._drainWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenDrained(self) -> Deferred[None]:
        """
        @return: fires when no established connection is left.
        """
        if not self.sessions:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drainWaiters.append(waiter)
        return waiter

    def update(self, settings: ServerTLSSettings) -> None:
        """
        Use C{settings} for new connections; established ones keep theirs
        (see L{revalidate}).

        @raise OpenSSL.SSL.Error: if OpenSSL refuses the settings; the
            current ones then stay in force.
        """
        minimum = settings.minimumTLSVersion
        # CertificateOptions takes cryptography objects (its hints say
        # pyOpenSSL's, whose use is deprecated).
        options = CertificateOptions(
            privateKey=cast(Any, settings.privateKey),
            certificate=cast(Any, settings.certificate),
            extraCertChain=cast(Any, list(settings.chain)),
            enableSessionTickets=True,
            acceptableCiphers=_INTERMEDIATE_CIPHERS,
            trustRoot=trustRootFromCertificates(
                [Certificate(X509.from_cryptography(c)) for c in settings.anchors]
            ),
            **({"raiseMinimumTo": TLS_VERSIONS[minimum]} if minimum != "1.2" else {}),
        )
        context = options.getContext()
        store = context.get_cert_store()
        assert store is not None
        crlIssuers = {crl.issuer for crl in settings.usableCRLs}
        for crl in settings.usableCRLs:
            store.add_crl(crl)
        store.set_flags(_storeFlags(settings))
        context.set_verify_depth(settings.verifyDepth)
        for certificate in settings.anchors:
            context.add_client_ca(certificate)

        nonIssuers, policy = settings.nonIssuers, settings.policy
        # Per connection, while its chain is verified: the first trusted
        # certificate found above the leaf that may not issue, and the chain
        # of a handshake that began under settings replaced since.
        issuedThrough: WeakKeyDictionary[SSL.Connection, VerifyFailure] = WeakKeyDictionary()
        chains: WeakKeyDictionary[SSL.Connection, list[x509.Certificate]] = WeakKeyDictionary()

        def verify(
            connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
        ) -> bool | int:
            # OpenSSL calls this for each certificate of the chain it built,
            # from the trust anchor down to the leaf (depth 0): with ok=0 for
            # each error, then ok=1.
            der = dump_certificate(FILETYPE_ASN1, certificate) if depth == 0 or nonIssuers else b""
            if depth == 0 and len(der) > TICKET_LIMIT:
                # A ticket holds the client certificate and has at most 64
                # KiB: OpenSSL would fail the handshake ("internal error").
                connection.set_options(SSL.OP_NO_TICKET)
            if not ok:
                if (
                    errno == _UNABLE_TO_GET_CRL
                    and not settings.crlRequired
                    and certificate.to_cryptography().issuer not in crlIssuers
                ):
                    return True  # no CRL was given for this issuer: not checked
                return self._recorder.record(connection, certificate, errno, depth, ok)
            if self.settings is not settings:
                # The trust changed since this handshake began: the settings
                # in force decide, from the chain OpenSSL built.
                chain = chains.setdefault(connection, [])
                chain.insert(0, certificate.to_cryptography())
                if depth:
                    return True
                reason = self.recheck(chain[0], chain[1:])
                if reason is None:
                    return True
                return self._recorder.refuse(connection, _refusal(chain[0], reason))
            if depth:
                if der in nonIssuers:
                    # A client certificate of the bundle signed this chain.
                    issuedThrough.setdefault(
                        connection,
                        VerifyFailure(_INVALID_CA, depth, _subjectOf(certificate), ISSUER_NOT_CA),
                    )
                return True
            refusal = issuedThrough.get(connection)
            if refusal is None and not policy.isEmpty:
                refusal = _policyRefusal(policy, certificate.to_cryptography())
            return True if refusal is None else self._recorder.refuse(connection, refusal)

        setVerify(context, context.get_verify_mode(), verify)
        context.set_alpn_select_callback(_selectALPN)
        self.settings, self._options = settings, options
        self._recheck = _Rechecker(settings)

    def recheck(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime | None = None,
    ) -> str | None:
        """
        Would a client presenting C{certificate} (and C{chain}) be admitted
        under the current settings?

        @param now: the time CRLs are judged at (default: now).
        @return: L{None} if so, else the reason: C{revoked}, C{no longer
            trusted} or C{not allowed by policy}.
        """
        return self._recheck(certificate, chain, now)

    def recheckResumed(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime,
    ) -> str | None:
        """
        Would a client that resumed a session of the current settings still
        be admitted at C{now}?  (As L{recheck}, cheaply when time cannot
        have changed anything.)
        """
        return self._recheck.resumed(certificate, chain, now)

    def revalidate(self) -> int:
        """
        Cut every established connection whose peer the current settings
        no longer admit.

        @return: how many were cut.
        """
        return self._cutWhere(lambda session: self.recheck(*session.peer()))

    def cutExpired(self, now: datetime.datetime | None = None) -> int:
        """
        Cut the established connections whose client certificate has
        expired since they began.

        @return: how many were cut.
        """
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return self._cutWhere(
            lambda session: NO_LONGER_TRUSTED if session.peerNotAfter < now else None
        )

    def _cutWhere(self, reason: Callable[[LiveSession], str | None]) -> int:
        cut = 0
        for session in list(self.sessions):
            if (why := reason(session)) is not None:
                session.cut(why)
                cut += 1
        return cut

    def verifyFailure(self, connection: SSL.Connection) -> VerifyFailure | None:
        """
        @return: why OpenSSL rejected the client certificate on
            C{connection}, or L{None} if it did not.
        """
        return self._recorder.failure(connection)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Create the OpenSSL connection for a newly accepted socket.
        """
        return self._options.serverConnectionForTLS(tlsProtocol)
