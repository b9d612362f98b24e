"""
Tests for L{mtlsd._policy.AllowPolicy}.
"""

from twisted.trial.unittest import SynchronousTestCase

from mtlsd import ConfigurationError
from mtlsd._identity import identityFromCertificate
from mtlsd._policy import AllowPolicy
from mtlsd.testing import CertificateAuthority, selfSigned

ca = CertificateAuthority()
WEB = identityFromCertificate(
    ca.issue(
        "web-1.prod",
        names=("web-1.prod.example.org", "10.1.2.3"),
        uris=("spiffe://example.org/ns/prod/sa/web",),
        organizationalUnit="payments",
    ).certificate
)
OTHER = identityFromCertificate(selfSigned("db").certificate)


class AllowPolicyTests(SynchronousTestCase):
    def assertAllows(self, policy: AllowPolicy) -> None:
        self.assertTrue(policy.allows(WEB), policy)
        self.assertFalse(policy.allows(OTHER), policy)

    def test_empty(self) -> None:
        """
        An empty policy admits every verified client.
        """
        self.assertTrue(AllowPolicy().isEmpty)
        self.assertTrue(AllowPolicy().allows(OTHER))

    def test_commonName(self) -> None:
        """
        CN entries match exactly or by glob, case-insensitively; C{*} stays
        within one label.
        """
        self.assertAllows(AllowPolicy(commonNames=["web-1.prod"]))
        self.assertAllows(AllowPolicy(commonNames=["WEB-*.prod"]))
        self.assertFalse(AllowPolicy(commonNames=["*"]).allows(WEB))
        self.assertTrue(AllowPolicy(commonNames=["**"]).allows(WEB))

    def test_asciiOnly(self) -> None:
        """
        Case folding is ASCII only (a Kelvin sign is not a "k"), and C{*}
        never matches an empty label.
        """
        kelvin = identityFromCertificate(selfSigned("\u212a8s-admin").certificate)
        self.assertFalse(AllowPolicy(commonNames=["k8s-admin"]).allows(kelvin))
        dotted = identityFromCertificate(selfSigned(".prod").certificate)
        self.assertFalse(AllowPolicy(commonNames=["*.prod"]).allows(dotted))

    def test_dnsName(self) -> None:
        """
        DNS entries: C{*} is one label, C{**} any number.
        """
        self.assertAllows(AllowPolicy(dnsNames=["web-1.prod.example.org"]))
        self.assertAllows(AllowPolicy(dnsNames=["*.prod.example.org"]))
        self.assertAllows(AllowPolicy(dnsNames=["**.example.org"]))
        self.assertFalse(AllowPolicy(dnsNames=["*.example.org"]).allows(WEB))

    def test_uri(self) -> None:
        """
        URI entries (SPIFFE IDs): C{*} is one path segment, C{**} any number.
        """
        self.assertAllows(AllowPolicy(uris=["spiffe://example.org/ns/prod/sa/web"]))
        self.assertAllows(AllowPolicy(uris=["spiffe://example.org/ns/*/sa/web"]))
        self.assertAllows(AllowPolicy(uris=["spiffe://example.org/**"]))
        self.assertFalse(AllowPolicy(uris=["spiffe://example.org/*"]).allows(WEB))
        self.assertFalse(AllowPolicy(uris=["spiffe://example.org/ns/prod/sa/we"]).allows(WEB))

    def test_ip(self) -> None:
        """
        IP entries are addresses or networks.
        """
        self.assertAllows(AllowPolicy(ipAddresses=["10.1.2.3"]))
        self.assertAllows(AllowPolicy(ipAddresses=["10.1.0.0/16"]))
        self.assertFalse(AllowPolicy(ipAddresses=["10.2.0.0/16", "::/0"]).allows(WEB))

    def test_organizationalUnit(self) -> None:
        """
        OU entries match exactly.
        """
        self.assertAllows(AllowPolicy(organizationalUnits=["payments"]))
        self.assertFalse(AllowPolicy(organizationalUnits=["pay"]).allows(WEB))

    def test_fingerprints(self) -> None:
        """
        Certificate and key fingerprints, any case, colons or not.
        """
        colons = ":".join(WEB.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
        self.assertAllows(AllowPolicy(fingerprints=[colons]))
        self.assertAllows(AllowPolicy(spkiFingerprints=[WEB.spkiFingerprint]))
        self.assertFalse(AllowPolicy(fingerprints=[WEB.spkiFingerprint]).allows(WEB))

    def test_anyEntry(self) -> None:
        """
        One matching entry among several kinds is enough.
        """
        self.assertAllows(AllowPolicy(commonNames=["nobody"], organizationalUnits=["payments"]))

    def test_badEntries(self) -> None:
        """
        Malformed fingerprints and IPs are one clear error naming the option.
        """
        for kwargs, fragment in [
            ({"fingerprints": ["abc"]}, "--allow-fingerprint 'abc' is not a SHA-256"),
            ({"spkiFingerprints": ["zz" * 32]}, "--allow-spki"),
            ({"ipAddresses": ["10.0.0.300"]}, "--allow-ip '10.0.0.300'"),
        ]:
            error = self.assertRaises(ConfigurationError, AllowPolicy, **kwargs)
            self.assertIn(fragment, str(error))
