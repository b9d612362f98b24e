# -*- test-case-name: mtlsd.test.test_identity -*-
"""
Who is on the other end: the one place that turns a certificate into a
L{PeerIdentity}.
"""

from __future__ import annotations

import datetime
from typing import cast

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from OpenSSL.crypto import X509
from twisted.internet.interfaces import ISSLTransport
from twisted.web.iweb import IRequest


@frozen
class PeerIdentity:
    """
    The identity in a verified peer certificate.

    @ivar commonName: the subject's CN, or L{None}.
    @ivar dnsNames: DNS names of the subjectAltName.
    @ivar ipAddresses: IP addresses of the subjectAltName, as text.
    @ivar uris: URIs of the subjectAltName (SPIFFE IDs, for instance).
    @ivar emails: e-mail addresses of the subjectAltName.
    @ivar organizationalUnits: the subject's OUs.
    @ivar fingerprint: SHA-256 of the DER certificate, lowercase hex.
    @ivar spkiFingerprint: SHA-256 of the DER public key (SPKI), lowercase
        hex; it survives re-issuing a certificate for the same key.
    @ivar serial: the certificate's serial number.
    @ivar subject: the subject as an RFC 4514 string.
    @ivar issuer: the issuer as an RFC 4514 string.
    @ivar notBefore: start of validity (UTC).
    @ivar notAfter: end of validity (UTC).
    """

    commonName: str | None
    dnsNames: tuple[str, ...]
    ipAddresses: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    organizationalUnits: tuple[str, ...]
    fingerprint: str
    spkiFingerprint: str
    serial: int
    subject: str
    issuer: str
    notBefore: datetime.datetime
    notAfter: datetime.datetime


def _attributeValues(name: x509.Name, oid: x509.ObjectIdentifier) -> tuple[str, ...]:
    return tuple(str(a.value) for a in name.get_attributes_for_oid(oid))


def identityFromCertificate(certificate: x509.Certificate) -> PeerIdentity:
    """
    @return: the L{PeerIdentity} of C{certificate}.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dnsNames = tuple(san.get_values_for_type(x509.DNSName))
        ipAddresses = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        emails = tuple(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        dnsNames = ipAddresses = uris = emails = ()
    commonNames = _attributeValues(certificate.subject, NameOID.COMMON_NAME)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spkiDigest = hashes.Hash(hashes.SHA256())
    spkiDigest.update(spki)
    return PeerIdentity(
        commonName=commonNames[0] if commonNames else None,
        dnsNames=dnsNames,
        ipAddresses=ipAddresses,
        uris=uris,
        emails=emails,
        organizationalUnits=_attributeValues(certificate.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        spkiFingerprint=spkiDigest.finalize().hex(),
        serial=certificate.serial_number,
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        notBefore=certificate.not_valid_before_utc,
        notAfter=certificate.not_valid_after_utc,
    )


def _transportOf(request: object) -> object:
    """
    The TLS transport under a twisted.web request: its channel's transport
    for HTTP/1.1; for HTTP/2, the transport of the stream's connection
    (twisted.web's H2 streams have no transport of their own: Twisted
    ticket 9270).
    """
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    if transport is None:
        transport = getattr(getattr(channel, "_conn", None), "transport", None)
    return transport


def peerIdentity(transport: object) -> PeerIdentity:
    """
    The identity of the peer of a TLS transport whose handshake completed
    (the transport an mtlsd app protocol is given, or any Twisted TLS
    transport), or of the client of a twisted.web request served over one,
    by HTTP/1.1 or HTTP/2.

    @param transport: the transport, or a twisted.web request.
    @raise ValueError: if there is no verified peer certificate (not TLS,
        or the handshake has not completed).
    """
    if IRequest.providedBy(transport):
        transport = _transportOf(transport)
    certificate = (
        cast(X509 | None, ISSLTransport(transport).getPeerCertificate())
        if ISSLTransport.providedBy(transport)
        else None
    )
    if certificate is None:
        raise ValueError("this transport has no verified peer certificate")
    return identityFromCertificate(certificate.to_cryptography())
