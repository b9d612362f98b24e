"""
Tests for L{mtlsd._identity}.
"""

import datetime

from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mtlsd import PeerIdentity, identityFromCertificate, peerIdentity
from mtlsd.testing import CertificateAuthority, MemoryConnection, clientContext, serverContext


class IdentityTests(SynchronousTestCase):
    """
    L{identityFromCertificate} and L{peerIdentity}.
    """

    def setUp(self) -> None:
        self.ca = CertificateAuthority()
        self.client = self.ca.issue(
            "svc-a",
            names=("a.example", "10.0.0.1", "fd00::1"),
            uris=("spiffe://example.org/svc/a",),
            emails=("ops@example.org",),
            organizationalUnit="payments",
        )

    def test_fields(self) -> None:
        """
        Every field comes from the certificate.
        """
        certificate = self.client.certificate
        identity = identityFromCertificate(certificate)
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = hashes.Hash(hashes.SHA256())
        digest.update(spki)
        self.assertEqual(
            identity,
            PeerIdentity(
                commonName="svc-a",
                dnsNames=("a.example",),
                ipAddresses=("10.0.0.1", "fd00::1"),
                uris=("spiffe://example.org/svc/a",),
                emails=("ops@example.org",),
                organizationalUnits=("payments",),
                fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
                spkiFingerprint=digest.finalize().hex(),
                serial=certificate.serial_number,
                subject="OU=payments,CN=svc-a",
                issuer="CN=Test CA",
                notBefore=certificate.not_valid_before_utc,
                notAfter=certificate.not_valid_after_utc,
            ),
        )
        self.assertEqual(len(identity.fingerprint), 64)
        self.assertEqual(identity.fingerprint, identity.fingerprint.lower())
        self.assertEqual(identity.notAfter.tzinfo, datetime.timezone.utc)

    def test_frozen(self) -> None:
        """
        A L{PeerIdentity} cannot be changed.
        """
        identity = identityFromCertificate(self.client.certificate)
        self.assertRaises(AttributeError, setattr, identity, "commonName", "x")

    def test_noSubjectAltName(self) -> None:
        """
        Without a subjectAltName the name lists are empty.
        """
        from mtlsd.testing import selfSigned

        identity = identityFromCertificate(selfSigned("plain").certificate)
        self.assertEqual((identity.dnsNames, identity.uris, identity.emails), ((), (), ()))
        self.assertEqual(identity.issuer, "CN=plain")

    def test_fromAppTransport(self) -> None:
        """
        An application protocol behind mtlsd reads the client's identity from
        its transport.
        """
        c = MemoryConnection(
            serverContext(self.ca.server(), [self.ca.certificate]),
            clientContext(self.client, [self.ca.certificate]),
        )
        c.flush()
        self.assertEqual(
            peerIdentity(c.app.transport),
            identityFromCertificate(self.client.certificate),
        )
        self.assertEqual(peerIdentity(c.client.transport).commonName, "localhost")

    def test_notTLS(self) -> None:
        """
        A transport without a peer certificate is a clear error.
        """
        self.assertRaises(ValueError, peerIdentity, StringTransport())
