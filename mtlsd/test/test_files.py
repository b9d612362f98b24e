"""
Tests for loading certificates and keys: every bad file is one clear
sentence naming it.
"""

import os

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from twisted.trial.unittest import SynchronousTestCase

from mtlsd import ConfigurationError, ServerTLSSettings
from mtlsd._client import ClientTLSSettings
from mtlsd._context import ServerContext
from mtlsd._files import keyFileWarnings, loadCertificates, loadPrivateKey, readPassphrase
from mtlsd._pki import certificatePEM, keyPEM, makeCertificate, newKey
from mtlsd.test.helpers import hoursAgo
from mtlsd.testing import CertificateAuthority, selfSigned


class FilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.a, self.b = selfSigned("a"), selfSigned("b")

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertError(self, fragment: str, f, *args) -> str:
        error = self.assertRaises(ConfigurationError, f, *args)
        message = str(error)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_bundle(self) -> None:
        """
        Every certificate of a bundle is loaded; a key after them is ignored.
        """
        path = self.write(
            "b.pem",
            certificatePEM(self.a.certificate, self.b.certificate) + keyPEM(self.a.key),
        )
        self.assertEqual(
            loadCertificates(path, "client certificates"),
            [self.a.certificate, self.b.certificate],
        )

    def test_missing(self) -> None:
        """
        A missing file is named.
        """
        missing = os.path.join(self.dir, "nope.pem")
        self.assertError(
            f"client certificates file {missing} does not exist",
            loadCertificates,
            missing,
            "client certificates",
        )

    def test_unreadable(self) -> None:
        """
        A directory or an unreadable file is named.
        """
        self.assertError("is a directory", loadCertificates, self.dir, "x")
        if os.getuid() != 0:
            path = self.write("secret.pem", b"")
            os.chmod(path, 0)
            self.assertError("cannot be read", loadCertificates, path, "x")

    def test_noCertificate(self) -> None:
        """
        A file without a PEM certificate (a key, text) is named.
        """
        path = self.write("key.pem", keyPEM(self.a.key))
        self.assertError(
            f"{path} holds no PEM certificate",
            loadCertificates,
            path,
            "server certificate",
        )

    def test_brokenBlock(self) -> None:
        """
        A bundle with one broken block (corrupted or cut short) is refused and
        the block is named, never silently skipped.
        """
        good = certificatePEM(self.a.certificate)
        second = certificatePEM(self.b.certificate)
        corrupted = second[:100] + b"!!!!" + second[104:]
        path = self.write("c.pem", good + corrupted)
        self.assertError("certificate 2 (line", loadCertificates, path, "client certificates")
        for damaged, fragment in [
            (second.replace(b"-----BEGIN", b"----BEGIN"), "a marker line is damaged"),
            (
                second.replace(b"END CERTIFICATE-----", b"END CERTIFICATE----"),
                "certificate 2 (line",
            ),
        ]:
            path = self.write("d.pem", good + damaged)
            self.assertError(fragment, loadCertificates, path, "x")
        truncated = self.write("t.pem", good + second[: len(second) - 40])
        self.assertError("certificate 2 (line", loadCertificates, truncated, "client certificates")

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused with a way out.
        """
        encrypted = self.a.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = self.write("enc.key", encrypted)
        message = self.assertError("encrypted private key", loadPrivateKey, path, "server key")
        self.assertIn(f"server key file {path}", message)
        self.assertIn("--key-passphrase-file", message)

    def test_noKey(self) -> None:
        """
        A file without a key is named.
        """
        path = self.write("cert.pem", certificatePEM(self.a.certificate))
        self.assertError("holds no usable PEM private key", loadPrivateKey, path, "server key")

    def test_keyMismatch(self) -> None:
        """
        A key that does not belong to the certificate is refused.
        """
        cert = self.write("s.crt", certificatePEM(self.a.certificate))
        key = self.write("s.key", keyPEM(self.b.key))
        clients = self.write("c.pem", certificatePEM(self.b.certificate))
        self.assertError(
            "does not match the certificate",
            ServerTLSSettings.fromFiles,
            cert,
            key,
            [clients],
        )

    def test_keyInsideCertificateFile(self) -> None:
        """
        Without a key file the key is read from the certificate file, and
        further certificates there are the chain.
        """
        ca = CertificateAuthority()
        server = ca.server()
        cert = self.write(
            "s.pem",
            certificatePEM(server.certificate, ca.certificate) + keyPEM(server.key),
        )
        clients = self.write("c.pem", certificatePEM(self.a.certificate, self.b.certificate))
        settings = ServerTLSSettings.fromFiles(cert, None, [clients])
        self.assertEqual(settings.certificate, server.certificate)
        self.assertEqual(settings.chain, (ca.certificate,))
        self.assertEqual(settings.trusted, (self.a.certificate, self.b.certificate))

    def test_expiredServerWarns(self) -> None:
        """
        An expired server certificate loads, with a loud warning.
        """
        old = selfSigned("old", notBefore=hoursAgo(48), days=1)
        settings = ServerTLSSettings(old.certificate, old.key, (), (self.a.certificate,))
        [warning] = settings.warnings()
        self.assertIn("EXPIRED", warning)
        self.assertEqual(
            ServerTLSSettings(self.a.certificate, self.a.key, (), (self.a.certificate,)).warnings(),
            [],
        )


def encryptedKeyPEM(key, passphrase: bytes, format=serialization.PrivateFormat.PKCS8) -> bytes:
    """
    C{key} as PEM, encrypted with C{passphrase}.
    """
    return key.private_bytes(
        serialization.Encoding.PEM, format, serialization.BestAvailableEncryption(passphrase)
    )


class _FileCase(SynchronousTestCase):
    """
    A directory for the files of a test, a CA-issued server certificate and
    trusted client certificates.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.ca = CertificateAuthority()
        self.server = self.ca.server()
        self.clients = self.write("clients.pem", certificatePEM(selfSigned("a").certificate))

    def write(self, name: str, data: bytes, mode: int = 0o600) -> str:
        """
        Write a file with the given mode, whatever the umask.
        """
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def assertError(self, fragment: str, f, *args, **kwargs) -> str:
        """
        C{f} raises a one-line L{ConfigurationError} that contains
        C{fragment}.
        """
        error = self.assertRaises(ConfigurationError, f, *args, **kwargs)
        message = str(error)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message


class PassphraseTests(_FileCase):
    def setUp(self) -> None:
        super().setUp()
        self.certificate = self.write("server.crt", certificatePEM(self.server.certificate))
        self.key = self.write("server.key", encryptedKeyPEM(self.server.key, b"s3cret pass"))
        self.passphrase = self.write("pass.txt", b"s3cret pass\n")

    def test_encryptedKey(self) -> None:
        """
        An encrypted PKCS#8 key is decrypted with the passphrase of the
        passphrase file, and the server context builds.
        """
        settings = ServerTLSSettings.fromFiles(
            self.certificate, self.key, [self.clients], passphrasePath=self.passphrase
        )
        self.assertEqual(settings.certificate, self.server.certificate)
        self.assertEqual(settings.privateKey.public_key(), self.server.key.public_key())
        ServerContext(settings)

    def test_traditionalEncryptedKey(self) -> None:
        """
        A key encrypted in OpenSSL's traditional format (C{Proc-Type:
        4,ENCRYPTED}) is decrypted too.
        """
        key = self.write(
            "trad.key",
            encryptedKeyPEM(
                self.server.key, b"s3cret pass", serialization.PrivateFormat.TraditionalOpenSSL
            ),
        )
        settings = ServerTLSSettings.fromFiles(
            self.certificate, key, [self.clients], passphrasePath=self.passphrase
        )
        self.assertEqual(settings.privateKey.public_key(), self.server.key.public_key())

    def test_keyInsideCertificateFile(self) -> None:
        """
        An encrypted key after the certificate is decrypted too.
        """
        both = self.write(
            "both.pem",
            certificatePEM(self.server.certificate, self.ca.certificate)
            + encryptedKeyPEM(self.server.key, b"s3cret pass"),
        )
        settings = ServerTLSSettings.fromFiles(
            both, None, [self.clients], passphrasePath=self.passphrase
        )
        self.assertEqual(settings.chain, (self.ca.certificate,))
        self.assertEqual(settings.privateKey.public_key(), self.server.key.public_key())

    def test_wrongPassphrase(self) -> None:
        """
        A wrong passphrase is one sentence naming the key file and the
        passphrase file.
        """
        wrong = self.write("wrong.txt", b"s3cret\n")
        message = self.assertError(
            "cannot be decrypted with the passphrase from",
            ServerTLSSettings.fromFiles,
            self.certificate,
            self.key,
            [self.clients],
            passphrasePath=wrong,
        )
        self.assertEqual(
            message,
            f"server key file {self.key} cannot be decrypted with the passphrase from {wrong}.",
        )

    def test_missingPassphrase(self) -> None:
        """
        An encrypted key without a passphrase file is refused, pointing to
        C{--key-passphrase-file}.
        """
        self.assertError(
            "--key-passphrase-file",
            ServerTLSSettings.fromFiles,
            self.certificate,
            self.key,
            [self.clients],
        )

    def test_unencryptedKey(self) -> None:
        """
        An unencrypted key is used as it is, even with a passphrase.
        """
        key = self.write("plain.key", keyPEM(self.server.key))
        settings = ServerTLSSettings.fromFiles(
            self.certificate, key, [self.clients], passphrasePath=self.passphrase
        )
        self.assertEqual(settings.privateKey.public_key(), self.server.key.public_key())

    def test_loadPrivateKeyNamesItsSource(self) -> None:
        """
        L{loadPrivateKey} decrypts with the passphrase it is given and names
        where it came from when it does not fit.
        """
        key = loadPrivateKey(self.key, "server key", b"s3cret pass", "pass.txt")
        self.assertEqual(key.public_key(), self.server.key.public_key())
        self.assertError(
            "the passphrase from pass.txt.", loadPrivateKey, self.key, "k", b"no", "pass.txt"
        )
        self.assertError("the given passphrase.", loadPrivateKey, self.key, "k", b"no")

    def test_lineEndings(self) -> None:
        """
        The passphrase is the first line of the file without its line ending
        (LF or CRLF); other spaces are kept.
        """
        for data in [b"pw", b"pw\n", b"pw\r\n", b"pw\nsecond line\n", b"pw\r\nx"]:
            self.assertEqual(readPassphrase(self.write("p", data)), b"pw", data)
        self.assertEqual(readPassphrase(self.write("p", b" p w \t\n")), b" p w \t")

    def test_crlfPassphraseDecrypts(self) -> None:
        """
        A passphrase file written with CRLF decrypts the key.
        """
        passphrase = self.write("crlf.txt", b"s3cret pass\r\n")
        settings = ServerTLSSettings.fromFiles(
            self.certificate, self.key, [self.clients], passphrasePath=passphrase
        )
        self.assertEqual(settings.privateKey.public_key(), self.server.key.public_key())

    def test_badPassphraseFile(self) -> None:
        """
        An empty, missing or unreadable passphrase file is named.
        """
        empty = self.write("empty", b"")
        self.assertEqual(
            self.assertError("is empty", readPassphrase, empty),
            f"passphrase file {empty} is empty.",
        )
        self.assertError("starts with an empty line", readPassphrase, self.write("nl", b"\npw\n"))
        missing = os.path.join(self.dir, "nope")
        self.assertError(f"passphrase file {missing} does not exist", readPassphrase, missing)
        self.assertError("is a directory", readPassphrase, self.dir)
        self.assertError(
            f"passphrase file {missing} does not exist",
            ServerTLSSettings.fromFiles,
            self.certificate,
            self.key,
            [self.clients],
            passphrasePath=missing,
        )

    def test_client(self) -> None:
        """
        The client's encrypted key is decrypted with the passphrase file; a
        passphrase file without a certificate is refused.
        """
        ca = self.write("ca.pem", certificatePEM(self.ca.certificate))
        settings = ClientTLSSettings.fromFiles(
            self.certificate, self.key, ca, passphrasePath=self.passphrase
        )
        self.assertEqual(settings.privateKey.public_key(), self.server.key.public_key())  # type: ignore[union-attr]
        self.assertError(
            "--key-passphrase-file", ClientTLSSettings.fromFiles, self.certificate, self.key, ca
        )
        self.assertError(
            "--key-passphrase-file was given without --cert",
            ClientTLSSettings.fromFiles,
            None,
            None,
            ca,
            passphrasePath=self.passphrase,
        )


class PKCS12Tests(_FileCase):
    def setUp(self) -> None:
        super().setUp()
        intermediateKey = newKey()
        self.intermediate = makeCertificate(
            "Intermediate", intermediateKey, (self.ca.certificate, self.ca.key), isCA=True
        )
        self.leafKey = newKey()
        self.leaf = makeCertificate(
            "localhost", self.leafKey, (self.intermediate, intermediateKey), names=["localhost"]
        )
        self.passphrase = self.write("pass.txt", b"p12 password\n")

    def bundle(self, password: bytes | None, name: str = "server.p12") -> str:
        """
        Write the leaf, its key and its chain (intermediate, root) as a
        PKCS#12 file, encrypted with C{password} if given.
        """
        encryption = (
            serialization.NoEncryption()
            if password is None
            else serialization.BestAvailableEncryption(password)
        )
        data = pkcs12.serialize_key_and_certificates(
            b"server", self.leafKey, self.leaf, [self.intermediate, self.ca.certificate], encryption
        )
        return self.write(name, data)

    def test_withPassword(self) -> None:
        """
        The key, the certificate and the chain of a password-protected
        PKCS#12 file are those put in, and the server context builds.
        """
        settings = ServerTLSSettings.fromFiles(
            self.bundle(b"p12 password"), None, [self.clients], passphrasePath=self.passphrase
        )
        self.assertEqual(settings.certificate, self.leaf)
        self.assertEqual(settings.chain, (self.intermediate, self.ca.certificate))
        self.assertEqual(settings.privateKey.public_key(), self.leafKey.public_key())
        ServerContext(settings)

    def test_withoutPassword(self) -> None:
        """
        A PKCS#12 file without a password loads without a passphrase file,
        and with one.
        """
        path = self.bundle(None)
        for passphrase in [None, self.passphrase]:
            settings = ServerTLSSettings.fromFiles(
                path, None, [self.clients], passphrasePath=passphrase
            )
            self.assertEqual(settings.certificate, self.leaf)
            self.assertEqual(settings.chain, (self.intermediate, self.ca.certificate))

    def test_wrongPassword(self) -> None:
        """
        A wrong password is one sentence naming both files; none points to
        C{--key-passphrase-file}.
        """
        path = self.bundle(b"other")
        message = self.assertError(
            "does not open",
            ServerTLSSettings.fromFiles,
            path,
            None,
            [self.clients],
            passphrasePath=self.passphrase,
        )
        self.assertEqual(
            message,
            f"server certificate file {path} is a PKCS#12 file that the passphrase from"
            f" {self.passphrase} does not open.",
        )
        self.assertError(
            "--key-passphrase-file", ServerTLSSettings.fromFiles, path, None, [self.clients]
        )
        latin1 = self.write("latin1.txt", "pässword\n".encode("latin-1"))
        self.assertError(
            f"the passphrase from {latin1} does not open",
            ServerTLSSettings.fromFiles,
            path,
            None,
            [self.clients],
            passphrasePath=latin1,
        )

    def test_keyGiven(self) -> None:
        """
        A key file cannot be given with a PKCS#12 file, which holds the key,
        whether its password is known or not.
        """
        key = self.write("server.key", keyPEM(self.leafKey))
        for path in [self.bundle(None), self.bundle(b"p12 password", "locked.p12")]:
            self.assertError(
                f"--key {key} cannot be used",
                ServerTLSSettings.fromFiles,
                path,
                key,
                [self.clients],
            )

    def test_neitherPEMNorPKCS12(self) -> None:
        """
        A certificate file that is neither PEM nor PKCS#12 (a DER
        certificate, an empty file) is named.
        """
        der = self.write("der.crt", self.leaf.public_bytes(serialization.Encoding.DER))
        empty = self.write("empty.crt", b"")
        for path in [der, empty]:
            self.assertEqual(
                self.assertError(
                    "not a PKCS#12 file", ServerTLSSettings.fromFiles, path, None, [self.clients]
                ),
                f"server certificate file {path} holds no PEM certificate and is not a"
                " PKCS#12 file.",
            )

    def test_withoutKey(self) -> None:
        """
        A PKCS#12 file without a key is refused.
        """
        data = pkcs12.serialize_key_and_certificates(
            b"server", None, None, [self.leaf], serialization.NoEncryption()
        )
        path = self.write("certs.p12", data)
        self.assertError("without a ", ServerTLSSettings.fromFiles, path, None, [self.clients])

    def test_client(self) -> None:
        """
        A client certificate can be a PKCS#12 file too.
        """
        ca = self.write("ca.pem", certificatePEM(self.ca.certificate))
        settings = ClientTLSSettings.fromFiles(
            self.bundle(b"p12 password"), None, ca, passphrasePath=self.passphrase
        )
        self.assertEqual(settings.certificate, self.leaf)
        self.assertEqual(settings.chain, (self.intermediate, self.ca.certificate))
        self.assertEqual(settings.privateKey.public_key(), self.leafKey.public_key())  # type: ignore[union-attr]


class KeyFileModeTests(_FileCase):
    def test_readableByOthers(self) -> None:
        """
        A key file readable by group and others is warned about, with its
        mode and the fix.
        """
        path = self.write("server.key", keyPEM(self.server.key), 0o644)
        [warning] = keyFileWarnings(path)
        self.assertEqual(
            warning,
            f"{path} holds a private key and is readable by group and others (mode 0644):"
            f" restrict it with chmod 600 {path}.",
        )

    def test_readableByGroup(self) -> None:
        """
        Group read alone is warned about too.
        """
        [warning] = keyFileWarnings(self.write("server.key", b"", 0o640))
        self.assertIn("readable by group (mode 0640)", warning)

    def test_ownerOnly(self) -> None:
        """
        A key file only its owner may read or write is not warned about.
        """
        for mode in [0o600, 0o400, 0o700, 0o622]:
            self.assertEqual(keyFileWarnings(self.write("server.key", b"", mode)), [], oct(mode))

    def test_quoted(self) -> None:
        """
        The fix quotes a file name that needs it in a shell.
        """
        [warning] = keyFileWarnings(self.write("my key.pem", b"", 0o604))
        self.assertIn("chmod 600 '", warning)

    def test_settings(self) -> None:
        """
        L{ServerTLSSettings.fromFiles} records warnings about the file
        holding the key: the key file, else the certificate file (PEM or
        PKCS#12); and about the passphrase file.  They do not change
        equality.
        """
        certificate = self.write("server.crt", certificatePEM(self.server.certificate), 0o644)
        key = self.write("server.key", keyPEM(self.server.key), 0o644)
        settings = ServerTLSSettings.fromFiles(certificate, key, [self.clients])
        [warning] = settings.fileWarnings
        self.assertIn(f"{key} holds the server's private key", warning)
        self.assertIn(f"chmod 600 {key}", warning)

        os.chmod(key, 0o600)
        quiet = ServerTLSSettings.fromFiles(certificate, key, [self.clients])
        self.assertEqual(quiet.fileWarnings, ())
        self.assertEqual(attrs.evolve(settings, fileWarnings=()), settings)

        both = self.write(
            "both.pem", certificatePEM(self.server.certificate) + keyPEM(self.server.key), 0o644
        )
        [warning] = ServerTLSSettings.fromFiles(both, None, [self.clients]).fileWarnings
        self.assertIn(f"{both} holds the server's private key", warning)

        p12 = self.write(
            "server.p12",
            pkcs12.serialize_key_and_certificates(
                None, self.server.key, self.server.certificate, None, serialization.NoEncryption()
            ),
            0o644,
        )
        [warning] = ServerTLSSettings.fromFiles(p12, None, [self.clients]).fileWarnings
        self.assertIn(f"{p12} holds the server's private key", warning)

        passphrase = self.write("pass.txt", b"pw\n", 0o644)
        [warning] = ServerTLSSettings.fromFiles(
            certificate, key, [self.clients], passphrasePath=passphrase
        ).fileWarnings
        self.assertIn(f"{passphrase} holds the server key's passphrase", warning)
