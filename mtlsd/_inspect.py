# -*- test-case-name: mtlsd.test.test_cli -*-
"""
C{mtlsd inspect}: what is in a PEM bundle, certificate by certificate, and
in a CRL.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from cryptography import x509

from ._identity import identityFromCertificate


def _usages(certificate: x509.Certificate) -> str:
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return "any (no extended key usage)"
    return ", ".join(getattr(oid, "_name", oid.dotted_string) for oid in eku.value)


def _isCA(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def describeCertificate(
    certificate: x509.Certificate, now: datetime.datetime | None = None
) -> Iterator[str]:
    """
    @return: lines describing C{certificate}: subject, issuer, SANs,
        validity (flagging expired and not-yet-valid), serial, SHA-256
        fingerprints of the certificate and of its public key.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    identity = identityFromCertificate(certificate)
    names = (
        [f"DNS:{n}" for n in identity.dnsNames]
        + [f"IP:{n}" for n in identity.ipAddresses]
        + [f"URI:{n}" for n in identity.uris]
        + [f"email:{n}" for n in identity.emails]
    )
    if identity.notAfter < now:
        state = f"EXPIRED {(now - identity.notAfter).days} days ago"
    elif identity.notBefore > now:
        state = "NOT YET VALID"
    else:
        state = f"valid, {(identity.notAfter - now).days} days left"
    selfSigned = certificate.issuer == certificate.subject
    yield f"  subject:      {identity.subject}"
    yield f"  issuer:       {identity.issuer}{' (self-signed)' if selfSigned else ''}"
    yield f"  SANs:         {', '.join(names) if names else 'none'}"
    yield (
        f"  validity:     {identity.notBefore:%Y-%m-%d %H:%M:%S} to"
        f" {identity.notAfter:%Y-%m-%d %H:%M:%S} UTC ({state})"
    )
    yield f"  serial:       {identity.serial:x}"
    yield f"  CA:           {'yes' if _isCA(certificate) else 'no'}"
    yield f"  usage:        {_usages(certificate)}"
    yield f"  sha256:       {identity.fingerprint}"
    yield f"  spki sha256:  {identity.spkiFingerprint}"


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def describeCRL(
    crl: x509.CertificateRevocationList, now: datetime.datetime | None = None
) -> Iterator[str]:
    """
    @return: lines describing C{crl}: issuer, thisUpdate and nextUpdate
        (flagging a CRL past its nextUpdate, which OpenSSL refuses), and
        the serial numbers it revokes, in the form C{describeCertificate}
        shows them.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    nextUpdate = crl.next_update_utc
    if nextUpdate is None:
        state = "none"
    elif nextUpdate < now:
        state = (
            f"{_when(nextUpdate)} (EXPIRED {(now - nextUpdate).days} days ago: every"
            " certificate of this issuer is refused until it is renewed)"
        )
    else:
        state = f"{_when(nextUpdate)} ({(nextUpdate - now).days} days left)"
    revoked = sorted(crl, key=lambda entry: entry.serial_number)
    yield f"  issuer:       {crl.issuer.rfc4514_string()}"
    yield f"  thisUpdate:   {_when(crl.last_update_utc)}"
    yield f"  nextUpdate:   {state}"
    count = f"{len(revoked)} certificate{'' if len(revoked) == 1 else 's'}"
    yield f"  revoked:      {count if revoked else 'none'}"
    for entry in revoked:
        yield f"    serial {entry.serial_number:x} on {_when(entry.revocation_date_utc)}"
