"""
Tests for the C{mtlsd} command's C{pki} and C{inspect} (C{connect} is
tested end to end in C{tests/}).
"""

import argparse
import datetime
import io
import os
import stat
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._cli import main, parseHostPort
from mtlsd._files import loadCertificates, loadCRLs
from mtlsd._identity import identityFromCertificate
from mtlsd._ocsp import responderOf
from mtlsd._pki import (
    CLIENT_AUTH,
    OCSP_SIGNING,
    SERVER_AUTH,
    certificatePEM,
    keyPEM,
    makeCRL,
    newKey,
)
from mtlsd.test.helpers import hoursAgo
from mtlsd.testing import CertificateAuthority, selfSigned

FILES = "ca.crt ca.key client.crt client.key crl.pem server.crt server.key".split()


def runCommand(case: SynchronousTestCase, *argv: str) -> tuple[int, str, str]:
    """
    Run C{mtlsd ARGV} in this process: its exit code, output and errors.
    """
    out, err = io.StringIO(), io.StringIO()
    case.patch(sys, "stdout", out)
    case.patch(sys, "stderr", err)
    with case.assertRaises(SystemExit) as exit:
        main(list(argv))
    return exit.exception.code, out.getvalue(), err.getvalue()


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)

    def command(self, *argv: str) -> tuple[int, str, str]:
        return runCommand(self, *argv)

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

    def test_pkiInitServerNamesOnce(self) -> None:
        """
        C{pki init --server-name} names that are already among the defaults,
        or given twice, appear once in the server certificate, in the order
        first given.
        """
        code, out, err = self.command(
            "pki", "init", self.path("pki"), "--server-name", "db.internal",
            "--server-name", "10.0.0.5", "--server-name", "localhost",
            "--server-name", "DB.internal", "--server-name", "0::1",
        )  # fmt: skip
        self.assertEqual((code, err), (0, ""))
        [server] = loadCertificates(self.path("pki", "server.crt"), "x")
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            [str(name.value) for name in names],
            ["localhost", "127.0.0.1", "::1", "db.internal", "10.0.0.5"],
        )

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
        A file that is neither certificates, a CRL nor PKCS#12 gives one
        line and exit 1; the other files are still described.  A key file
        is said to hold a key, which is not shown.
        """
        bad = self.write("bad.pem", b"not a certificate\n")
        binary = self.write("bad.der", bytes(range(256)))
        key = self.write("alice.key", keyPEM(newKey()))
        good = self.write("good.pem", certificatePEM(selfSigned("good").certificate))
        code, out, err = self.command("inspect", bad, binary, key, good, self.path("missing"))
        self.assertEqual(code, 1)
        neither = "holds no certificate or CRL (PEM, or a DER CRL) and is not a PKCS#12 file."
        self.assertEqual(
            err.splitlines(),
            [
                f"mtlsd inspect: {bad} {neither}",
                f"mtlsd inspect: {binary} {neither}",
                f"mtlsd inspect: {key} holds a private key (never shown) but no PEM"
                " certificate or CRL.",
                f"mtlsd inspect: the file {self.path('missing')} does not exist.",
            ],
        )
        self.assertIn("CN=good", out)
        self.assertNotIn("alice.key", out)

    def write(self, name: str, data: bytes) -> str:
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    def test_inspectCRL(self) -> None:
        """
        C{inspect} describes a CRL, PEM or DER: its issuer, thisUpdate,
        nextUpdate (flagging one past it) and the serials it revokes, in the
        form it shows certificates' serials.
        """
        ca = CertificateAuthority("Revoking CA")
        alice = ca.issue("alice").certificate
        start = hoursAgo(1).replace(microsecond=0)
        crl = makeCRL((ca.certificate, ca.key), [alice, 0x1234], days=10, lastUpdate=start)
        pem = self.write("crl.pem", crl.public_bytes(serialization.Encoding.PEM))
        der = self.write("crl.der", crl.public_bytes(serialization.Encoding.DER))
        code, out, err = self.command("inspect", pem, der)
        self.assertEqual((code, err), (0, ""))
        forPEM, forDER = out.split(f"{der} CRL [1/1]\n")
        self.assertTrue(forPEM.startswith(f"{pem} CRL [1/1]\n"), out)
        self.assertEqual(forPEM.split("\n", 1)[1], forDER)
        revoked = sorted([alice.serial_number, 0x1234])
        self.assertEqual(
            forDER.splitlines()[:4],
            [
                "  issuer:       CN=Revoking CA",
                f"  thisUpdate:   {start:%Y-%m-%d %H:%M:%S} UTC",
                f"  nextUpdate:   {start + datetime.timedelta(days=10):%Y-%m-%d %H:%M:%S}"
                " UTC (9 days left)",
                "  revoked:      2 certificates",
            ],
        )
        self.assertRegex(forDER.splitlines()[4], rf"^    serial {revoked[0]:x} on \d{{4}}-")
        self.assertRegex(forDER.splitlines()[5], rf"^    serial {revoked[1]:x} on \d{{4}}-")
        self.assertIn(f"serial:       {alice.serial_number:x}\n", self.inspectCertificate(alice))

        old = makeCRL((ca.certificate, ca.key), days=1, lastUpdate=hoursAgo(72))
        code, out, err = self.command(
            "inspect", self.write("old.pem", old.public_bytes(serialization.Encoding.PEM))
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn("(EXPIRED 2 days ago: every certificate of this issuer is refused", out)
        self.assertIn("  revoked:      none\n", out)

    def inspectCertificate(self, certificate: x509.Certificate) -> str:
        code, out, err = self.command("inspect", self.write("c.pem", certificatePEM(certificate)))
        self.assertEqual((code, err), (0, ""))
        return out

    def test_inspectPKCS12(self) -> None:
        """
        C{inspect --passphrase-file} describes the certificate and chain of
        a PKCS#12 file and never shows its key; without the password, or
        with a wrong one, one line and exit 1.
        """
        ca = CertificateAuthority("P12 CA")
        alice = ca.issue("alice")
        data = pkcs12.serialize_key_and_certificates(
            b"alice",
            alice.key,
            alice.certificate,
            [ca.certificate],
            serialization.BestAvailableEncryption(b"s3cret"),
        )
        bundle = self.write("alice.p12", data)
        passphrase = self.write("pass", b"s3cret\n")
        code, out, err = self.command("inspect", "--passphrase-file", passphrase, bundle)
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(
            lines[0], f"{bundle}: PKCS#12 with a private key (not shown) and certificates:"
        )
        self.assertEqual(lines[1], f"{bundle} [1/2]")
        self.assertIn("  subject:      CN=alice", lines)
        self.assertIn(f"{bundle} [2/2]", lines)
        self.assertIn("  subject:      CN=P12 CA", lines)
        for secret in keyPEM(alice.key).splitlines()[1:-1]:
            self.assertNotIn(secret.decode(), out)
        self.assertNotIn("PRIVATE KEY", out)

        for extra, fragment in [
            ((), "is a PKCS#12 file with a password: give it with --key-passphrase-file."),
            (
                ("--passphrase-file", self.write("wrong", b"wrong\n")),
                "is a PKCS#12 file that the passphrase from",
            ),
        ]:
            code, out, err = self.command("inspect", *extra, bundle)
            self.assertEqual((code, out), (1, ""))
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith(f"mtlsd inspect: inspected certificate file {bundle} "))
            self.assertIn(fragment, err)

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


class PKISafetyTests(SynchronousTestCase):
    """
    The PKI commands never destroy a CA and refuse bad input with one line.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.pki = os.path.join(self.dir, "pki")
        self.command("pki", "init", self.pki)

    def command(self, *argv: str) -> tuple[int, str, str]:
        return runCommand(self, *argv)

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.pki, name), "rb") as f:
            return f.read()

    def test_initCompletesWithoutReplacingCA(self) -> None:
        """
        C{pki init} on a PKI missing a file recreates that file only, signed
        by the existing CA.
        """
        ca, caKey = self.read("ca.crt"), self.read("ca.key")
        server = self.read("server.crt")
        os.remove(os.path.join(self.pki, "client.key"))
        code, out, err = self.command("pki", "init", self.pki)
        self.assertEqual(code, 0, err)
        self.assertEqual((self.read("ca.crt"), self.read("ca.key")), (ca, caKey))
        self.assertEqual(self.read("server.crt"), server)
        [client] = loadCertificates(os.path.join(self.pki, "client.crt"), "x")
        [caCertificate] = loadCertificates(os.path.join(self.pki, "ca.crt"), "x")
        self.assertEqual(client.issuer, caCertificate.subject)

    def test_halfACA(self) -> None:
        """
        A CA certificate without its key is not silently replaced.
        """
        os.remove(os.path.join(self.pki, "ca.key"))
        code, out, err = self.command("pki", "init", self.pki)
        self.assertEqual(code, 1)
        self.assertIn("only one of ca.crt and ca.key", err)

    def test_issueRefusals(self) -> None:
        """
        C{pki issue} refuses the PKI's own names, an existing name (unless
        C{--force}), out-of-range days and names that are not valid.
        """
        for argv, fragment in [
            (["ca"], "'ca' is not a usable certificate name"),
            (["server"], "'server' is not a usable certificate name"),
            (["../x"], "is not a usable certificate name"),
            (["n", "--days", "0"], "--days must be from 1 to 36500, not 0"),
            (["n", "--days", "99999999"], "--days must be from 1 to 36500"),
            (
                ["n", "--dns", "é.example"],
                "--dns 'é.example' is not an ASCII DNS name; use its IDNA form xn--9ca.example.",
            ),
            (["n", "--uri", "not a uri"], "--uri 'not a uri' is not a URI: it needs a scheme"),
            (["n", "--uri", "spiffe:"], "--uri 'spiffe:' is not a URI"),
            (["n", "--uri", "//example.org/alice"], "is not a URI: it needs a scheme"),
            (["n", "--uri", "https://é.example/"], "only printable ASCII"),
            (["n", "--dns", "a..example"], "--dns 'a..example' is not a DNS name or IP address"),
            (["n", "--dns=-a.example"], "--dns '-a.example' is not a DNS name"),
            (["n", "--dns", "a.*.example"], "--dns 'a.*.example' is not a DNS name"),
            (["n", "--dns", "*"], "--dns '*' is not a DNS name"),
            (["n", "--dns", "has space.example"], "is not a DNS name"),
            (["n", "--dns", "x" * 64 + ".example"], "is not a DNS name"),
        ]:
            code, out, err = self.command("pki", "issue", "--pki", self.pki, *argv)
            self.assertEqual(code, 1, argv)
            self.assertIn(fragment, err)
            self.assertEqual(err.count("\n"), 1, err)
        self.assertFalse(os.path.exists(os.path.join(self.pki, "n.crt")))
        self.assertEqual(self.command("pki", "issue", "--pki", self.pki, "alice")[0], 0)
        first = self.read("alice.crt")
        code, out, err = self.command("pki", "issue", "--pki", self.pki, "alice")
        self.assertEqual(code, 1)
        self.assertIn("exists; use --force", err)
        self.assertEqual(self.read("alice.crt"), first)
        self.assertEqual(self.command("pki", "issue", "--pki", self.pki, "alice", "--force")[0], 0)
        self.assertNotEqual(self.read("alice.crt"), first)

    def test_validNamesAccepted(self) -> None:
        """
        C{pki issue} takes URIs of any scheme, wildcard and single-label DNS
        names and IP addresses; C{pki init --server-name} checks its names
        the same way.
        """
        code, out, err = self.command(
            "pki", "issue", "--pki", self.pki, "n",
            "--uri", "spiffe://example.org/ns/a", "--uri", "urn:uuid:6e8bc430-9c3a-11d9",
            "--dns", "*.example.com", "--dns", "db-1.internal", "--dns", "localhost",
            "--dns", "10.0.0.5", "--dns", "::1",
        )  # fmt: skip
        self.assertEqual((code, err), (0, ""))
        identity = identityFromCertificate(
            loadCertificates(os.path.join(self.pki, "n.crt"), "x")[0]
        )
        self.assertEqual(identity.dnsNames, ("*.example.com", "db-1.internal", "localhost"))
        self.assertEqual(identity.ipAddresses, ("10.0.0.5", "::1"))
        self.assertEqual(
            identity.uris, ("spiffe://example.org/ns/a", "urn:uuid:6e8bc430-9c3a-11d9")
        )
        other = os.path.join(self.dir, "other")
        code, out, err = self.command("pki", "init", other, "--server-name", "bad name")
        self.assertEqual(code, 1)
        self.assertEqual(
            err.splitlines(), ["mtlsd pki: --server-name 'bad name' is not a DNS name or IP"
            " address (a DNS name is letters, digits and hyphens in dot-separated labels; a"
            " wildcard only as the first label, as in *.example.com)."]
        )  # fmt: skip
        self.assertFalse(os.path.exists(other))

    def test_unwritable(self) -> None:
        """
        A directory that cannot be made gives one line.
        """
        code, out, err = self.command("pki", "init", "/proc/mtlsd-cannot-write-here")
        self.assertEqual(code, 1)
        self.assertIn("cannot write the PKI in /proc/mtlsd-cannot-write-here", err)
        self.assertEqual(err.count("\n"), 1)


class RevokeTests(SynchronousTestCase):
    def test_ocspPKI(self) -> None:
        """
        C{pki init --ocsp-url} makes the certificates issued from then on
        name the responder (not the responder's own), issues the responder's
        certificate for OCSP signing, and keeps C{index.txt} as C{openssl
        ocsp} reads it: one line per certificate, C{R} with the revocation
        time once revoked.
        """
        pki = os.path.abspath(self.mktemp())
        code, out, err = runCommand(self, "pki", "init", pki, "--ocsp-url", "http://127.0.0.1:8888")
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"serve it: openssl ocsp -index {pki}/index.txt", out)
        self.assertIn(f"-rsigner {pki}/ocsp.crt -rkey {pki}/ocsp.key -port 8888", out)
        runCommand(self, "pki", "issue", "--pki", pki, "alice")
        certificate = lambda name: loadCertificates(os.path.join(pki, f"{name}.crt"), "x")[0]  # noqa: E731
        self.assertEqual(responderOf(certificate("alice")), "http://127.0.0.1:8888")
        self.assertEqual(responderOf(certificate("client")), "http://127.0.0.1:8888")
        self.assertIsNone(responderOf(certificate("ocsp")))
        usage = certificate("ocsp").extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(usage.value), [OCSP_SIGNING])
        runCommand(self, "pki", "revoke", "--pki", pki, "alice")
        with open(os.path.join(pki, "index.txt")) as f:
            lines = {line.split("\t")[3]: line.split("\t") for line in f.read().splitlines()}
        self.assertEqual(len(lines), 4)  # alice, client, ocsp, server
        alice = lines[f"{certificate('alice').serial_number:X}".zfill(40)]
        self.assertEqual((alice[0], alice[4], alice[5]), ("R", "unknown", "/CN=alice"))
        self.assertRegex(alice[2], r"^\d{12}Z$")
        server = lines[f"{certificate('server').serial_number:X}".zfill(40)]
        self.assertEqual((server[0], server[2]), ("V", ""))
        code, out, err = runCommand(self, "pki", "ocsp-index", "--pki", pki)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("4 certificates, 1 revoked", out)

    def test_ocspPKIErrors(self) -> None:
        """
        A responder URL that is not HTTP, or C{ocsp-index} without a PKI,
        is one line.
        """
        code, out, err = runCommand(
            self, "pki", "init", self.mktemp(), "--ocsp-url", "127.0.0.1:8888"
        )
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "mtlsd pki: --ocsp-url '127.0.0.1:8888' is not an http:// or https:// URL of an OCSP"
            " responder.\n",
        )
        for url in ("http://[::1", "http://127.0.0.1:99999"):
            directory = self.mktemp()
            code, out, err = runCommand(self, "pki", "init", directory, "--ocsp-url", url)
            self.assertEqual((code, err.count("\n")), (1, 1), err)
            self.assertIn("is not an http:// or https:// URL", err)
            self.assertFalse(os.path.exists(directory))  # refused before anything is made
        code, out, err = runCommand(self, "pki", "ocsp-index", "--pki", self.mktemp())
        self.assertEqual(code, 1)
        self.assertIn("run 'mtlsd pki init' first", err)

    def test_revoke(self) -> None:
        """
        C{pki revoke NAME} adds NAME to crl.pem, keeping earlier entries,
        signed by the CA; a self-signed or unknown name is refused.
        """
        pki = os.path.abspath(self.mktemp())
        for argv in (
            ["init", pki],
            ["issue", "--pki", pki, "alice"],
            ["issue", "--pki", pki, "bob"],
        ):
            self.assertEqual(runCommand(self, "pki", *argv)[0], 0)
        code, out, err = runCommand(self, "pki", "revoke", "--pki", pki, "alice")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.endswith(" lists 1 certificate\n"), out)
        code, out, err = runCommand(self, "pki", "revoke", "--pki", pki, "bob")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.endswith(" lists 2 certificates\n"), out)
        [crl] = loadCRLs(os.path.join(pki, "crl.pem"))
        [ca] = loadCertificates(os.path.join(pki, "ca.crt"), "x")
        self.assertTrue(crl.is_signature_valid(ca.public_key()))  # type: ignore[arg-type]
        serials = {
            loadCertificates(os.path.join(pki, f"{n}.crt"), "x")[0].serial_number
            for n in ("alice", "bob")
        }
        self.assertEqual({entry.serial_number for entry in crl}, serials)

        runCommand(self, "pki", "issue", "--pki", pki, "--self-signed", "carol")
        for name, fragment in [
            ("carol", "not issued by this PKI's CA"),
            ("nobody", "does not exist"),
        ]:
            code, out, err = runCommand(self, "pki", "revoke", "--pki", pki, name)
            self.assertEqual(code, 1)
            self.assertIn(fragment, err)


class CheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.assertEqual(runCommand(self, "pki", "init", os.path.join(self.dir, "pki"))[0], 0)

    def config(self, text: str) -> str:
        path = os.path.join(self.dir, "mtlsd.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_describesEachService(self) -> None:
        """
        C{mtlsd check --config FILE} reads every file of every service and
        describes each: listen address, certificate, trust, backend.
        """
        pki = os.path.join(self.dir, "pki")
        path = self.config(
            f'cert = "{pki}/server.crt"\nkey = "{pki}/server.key"\n'
            f'client-certs = "{pki}/ca.crt"\n'
            '[[service]]\nname = "api"\nport = 8443\nforward = "tcp:127.0.0.1:8080"\n'
            '[[service]]\nname = "web"\nport = 9443\nforward-http = "tcp:127.0.0.1:8081"\n'
            'server-names = "web.example"\n'
            '[[service]]\nname = "other"\nport = 9443\ndefault = true\n'
        )
        code, out, err = runCommand(self, "check", "--config", path)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("service api:\n  listen: tcp:8443:", out)
        self.assertIn("  certificate: CN=server, valid until ", out)
        self.assertIn(f"  trusts: {pki}/ca.crt: 0 client certificates; issuing CAs:", out)
        self.assertIn("  backend: relay to tcp:127.0.0.1:8080\n", out)
        self.assertIn("service web:", out)
        self.assertIn("  backend: HTTP to tcp:127.0.0.1:8081\n", out)
        self.assertIn("  server names: web.example\n", out)
        self.assertIn("  server names: (none) (the default)\n", out)
        self.assertTrue(out.endswith(f"{path}: 3 services, valid\n"), out)

    def test_oneService(self) -> None:
        """
        A file without tables describes the daemon.
        """
        pki = os.path.join(self.dir, "pki")
        code, out, err = runCommand(self, "check", "--config", self.config(f'pki = "{pki}"\n'))
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("the daemon:\n  listen: tcp:8082:"), out)

    def test_problems(self) -> None:
        """
        A file that is missing, a mistake in a table, or a file a service
        names that cannot be used: one line, exit 1, nothing else printed.
        """
        pki = os.path.join(self.dir, "pki")
        for text, message in [
            (None, "does not exist"),
            ('[[service]]\nname = "api"\nportt = 1\n', "service 'api' has an unknown key 'portt'"),
            (
                f'[[service]]\nname = "api"\ncert = "{pki}/nope.crt"\n'
                f'client-certs = "{pki}/ca.crt"\n',
                "mtlsd check: service 'api': server certificate file",
            ),
        ]:
            path = self.config(text) if text else os.path.join(self.dir, "none.toml")
            code, out, err = runCommand(self, "check", "--config", path)
            self.assertEqual((code, out, err.count("\n")), (1, "", 1), err)
            self.assertIn(message, err)
