"""
Tests for the C{mtlsd} command's C{pki} and C{inspect} (C{connect} is
tested end to end in C{tests/}).
"""

import argparse
import io
import os
import stat
import sys

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._cli import main, parseHostPort
from mtlsd._files import loadCertificates
from mtlsd._identity import identityFromCertificate
from mtlsd._pki import CLIENT_AUTH, SERVER_AUTH, certificatePEM
from mtlsd.test.helpers import hoursAgo, selfSigned

FILES = "ca.crt ca.key client.crt client.key crl.pem server.crt server.key".split()


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)

    def command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as exit:
            main(list(argv))
        return exit.exception.code, out.getvalue(), err.getvalue()

    def path(self, *names: str) -> str:
        return os.path.join(self.dir, *names)

    def test_pkiInit(self) -> None:
        """
        C{pki init} writes the seven files, keys readable by the owner only,
        with the right usages and server names; a second run keeps them.
        """
        code, out, err = self.command("pki", "init", self.path("pki"), "--server-name", "db.test")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(sorted(os.listdir(self.path("pki"))), FILES)
        for key in ("ca.key", "server.key", "client.key"):
            self.assertEqual(stat.S_IMODE(os.stat(self.path("pki", key)).st_mode), 0o600)
        [server] = loadCertificates(self.path("pki", "server.crt"), "x")
        identity = identityFromCertificate(server)
        self.assertEqual(identity.dnsNames, ("localhost", "db.test"))
        self.assertEqual(identity.ipAddresses, ("127.0.0.1", "::1"))
        usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usage), [SERVER_AUTH])
        [client] = loadCertificates(self.path("pki", "client.crt"), "x")
        usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usage), [CLIENT_AUTH])
        with open(self.path("pki", "ca.crt"), "rb") as f:
            before = f.read()
        self.command("pki", "init", self.path("pki"))
        with open(self.path("pki", "ca.crt"), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_pkiIssue(self) -> None:
        """
        C{pki issue} writes a CA-signed (or self-signed) client certificate
        with the names asked for.
        """
        pki = self.path("pki")
        self.command("pki", "init", pki)
        code, out, err = self.command(
            "pki", "issue", "--pki", pki, "alice", "--dns", "alice.test",
            "--uri", "spiffe://test/alice", "--days", "10",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        [alice] = loadCertificates(self.path("pki", "alice.crt"), "x")
        [ca] = loadCertificates(self.path("pki", "ca.crt"), "x")
        identity = identityFromCertificate(alice)
        self.assertEqual(identity.issuer, ca.subject.rfc4514_string())
        self.assertEqual(
            (identity.commonName, identity.dnsNames, identity.uris),
            ("alice", ("alice.test",), ("spiffe://test/alice",)),
        )
        self.assertEqual((identity.notAfter - identity.notBefore).days, 10)
        self.command("pki", "issue", "--pki", pki, "bob", "--self-signed")
        [bob] = loadCertificates(self.path("pki", "bob.crt"), "x")
        self.assertEqual(bob.issuer, bob.subject)

    def test_pkiIssueWithoutPKI(self) -> None:
        """
        Issuing from a directory without a CA says to run C{pki init}.
        """
        code, out, err = self.command("pki", "issue", "--pki", self.path("none"), "alice")
        self.assertEqual(code, 1)
        self.assertIn("run 'mtlsd pki init' first", err)

    def test_inspect(self) -> None:
        """
        C{inspect} describes every certificate of a bundle and flags the
        expired ones.
        """
        good = selfSigned("good", names=("good.test",))
        old = selfSigned("old", notBefore=hoursAgo(72), days=1)
        bundle = self.path("bundle.pem")
        with open(bundle, "wb") as f:
            f.write(certificatePEM(good.certificate, old.certificate))
        code, out, err = self.command("inspect", bundle)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"{bundle} [1/2]", out)
        self.assertIn(f"{bundle} [2/2]", out)
        good_ = identityFromCertificate(good.certificate)
        self.assertIn(f"sha256:       {good_.fingerprint}", out)
        self.assertIn(f"spki sha256:  {good_.spkiFingerprint}", out)
        self.assertIn(f"serial:       {good_.serial:x}", out)
        self.assertIn("SANs:         DNS:good.test", out)
        self.assertIn("subject:      CN=old", out)
        self.assertIn("EXPIRED 2 days ago", out)
        self.assertEqual(out.count("EXPIRED"), 1)

    def test_inspectBadFile(self) -> None:
        """
        A file that is not certificates gives one line and exit 1; the other
        files are still described.
        """
        bad = self.path("bad.pem")
        with open(bad, "wb") as f:
            f.write(b"not a certificate\n")
        good = self.path("good.pem")
        with open(good, "wb") as f:
            f.write(certificatePEM(selfSigned("good").certificate))
        code, out, err = self.command("inspect", bad, good)
        self.assertEqual(code, 1)
        self.assertEqual(err, f"mtlsd inspect: certificate file {bad} holds no PEM certificate.\n")
        self.assertIn("CN=good", out)

    def test_hostPort(self) -> None:
        """
        C{HOST:PORT} and C{[IPv6]:PORT} are understood; anything else is not.
        """
        self.assertEqual(parseHostPort("localhost:8082"), ("localhost", 8082))
        self.assertEqual(parseHostPort("[::1]:8082"), ("::1", 8082))
        for bad in ("localhost", "localhost:http", ":80", "host:0", "host:70000"):
            self.assertRaises(argparse.ArgumentTypeError, parseHostPort, bad)
        code, out, err = self.command("connect", "localhost")
        self.assertEqual(code, 2)
        self.assertIn("is not HOST:PORT", err)
