# -*- test-case-name: mtlsd.test.test_server -*-
"""
What a mutual-TLS server is told to trust and present, read from files,
with the warnings about settings that work but may not do what is wanted.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import ConfigurationError
from ._files import Path, keyFileWarnings, loadCertificateAndKey, loadCertificates, loadCRLs
from ._policy import AllowPolicy
from ._verify import tlsGroups, validTLSVersion

DEFAULT_VERIFY_DEPTH = 4
CRL_WARNING_AHEAD = datetime.timedelta(days=1)


def _positive(instance: object, attribute: object, value: int) -> None:
    if value < 1:
        raise ValueError(f"verify depth must be at least 1, not {value}")


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


def _keyKind(key: PrivateKeyTypes) -> str:
    """
    The kind of a key as OpenSSL keeps one certificate per kind.
    """
    name = type(key).__name__.replace("PrivateKey", "")
    return {"EC": "ECDSA"}.get(name, name)


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
    @ivar groups: the key-exchange groups offered (see L{tlsGroups}).
    @ivar signatureAlgorithms: the signature algorithms accepted from
        clients (and signed with), in OpenSSL's syntax, or L{None} for
        OpenSSL's.
    @ivar clientCAs: certificates trusted as issuing CAs whatever their
        keyUsage says (C{--client-ca}).
    @ivar moreCertificates: server certificates of other key types than
        the first's, each with its key and chain: OpenSSL presents the one
        the client's signature algorithms allow.
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
    minimumTLSVersion: str = field(default="1.2", validator=validTLSVersion)
    groups: tuple[str, ...] = field(factory=lambda: tlsGroups(None))
    signatureAlgorithms: str | None = None
    clientCAs: tuple[x509.Certificate, ...] = ()
    moreCertificates: tuple[
        tuple[x509.Certificate, PrivateKeyTypes, tuple[x509.Certificate, ...]], ...
    ] = ()
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
        morePaths: Sequence[tuple[Path, Path | None]] = (),
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
        @param morePaths: server certificates of other key types, each
            with its key file (or L{None}), as C{certificatePath}.
        @param options: the other attributes (C{policy}, C{verifyDepth}, ...).
        @raise ConfigurationError: for any unusable file, a passphrase that
            does not open the key, or a key that does not match the
            certificate.
        """
        server = loadCertificateAndKey(certificatePath, keyPath, "server", passphrasePath)
        more = [
            loadCertificateAndKey(path, key, "server", passphrasePath) for path, key in morePaths
        ]
        kinds = {_keyKind(server.privateKey): certificatePath}
        for path, each in zip([p for p, _ in morePaths], more, strict=True):
            kind = _keyKind(each.privateKey)
            if kind in kinds:
                raise ConfigurationError(
                    f"server certificates {kinds[kind]} and {path} both have {kind} keys:"
                    " give one certificate per key type (RSA and ECDSA, say)."
                )
            kinds[kind] = path
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
            moreCertificates=tuple((m.certificate, m.privateKey, m.chain) for m in more),
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
