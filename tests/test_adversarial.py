"""
Black-box test of malformed and hostile handshakes: raw bytes, Python's
C{ssl} with forged certificates, and tlslite-ng (an independent TLS
implementation) signing with the wrong key.  Each is rejected with a logged
reason, the daemon stays up, and a checksummed transfer going on meanwhile
completes intact.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._pki import certificatePEM, keyPEM, makeCertificate, newKey
from tests._process import DEADLINE, pkiClient, receiveExactly, tlsClient
from tests.test_daemon import DaemonTestMixin

MiB = 1024 * 1024


def raw(port: int, data: bytes, closeWrite: bool = True) -> None:
    """
    Send bytes on a plain TCP connection and read until the daemon closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        try:
            sock.sendall(data)
            if closeWrite:
                sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except ConnectionError:
            pass


class AdversarialTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.workDirectory()
        self.daemon = self.startDaemon(self.directory, "--reload-interval", "0")
        self.pki = os.path.join(self.directory, "mtlsd-pki")
        with open(os.path.join(self.pki, "ca.key"), "rb") as f:
            self.caKey = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(self.pki, "ca.crt"), "rb") as f:
            self.ca = x509.load_pem_x509_certificate(f.read())

    def clientKey(self) -> bytes:
        with open(os.path.join(self.pki, "client.key"), "rb") as f:
            return f.read()

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def write(self, name: str, data: bytes) -> str:
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    def tlsAttempt(self, certificate: str, key: str) -> None:
        """
        A Python C{ssl} client presenting C{certificate} (with its chain);
        the daemon must not echo.
        """
        try:
            with tlsClient(self.daemon.port, certificate, key,
                           os.path.join(self.pki, "ca.crt"), "localhost") as sock:  # fmt: skip
                sock.sendall(b"let me in")
                self.assertEqual(sock.recv(100), b"")
        except (ssl.SSLError, ConnectionError):
            pass

    def chainTooLong(self) -> None:
        issuer, issuerKey = self.ca, self.caKey
        chain = []
        for n in range(6):  # six intermediates: beyond --verify-depth 4
            key = newKey()
            issuer = makeCertificate(f"Intermediate {n}", key, (issuer, issuerKey), isCA=True)
            issuerKey = key
            chain.insert(0, issuer)
        leafKey = newKey()
        leaf = makeCertificate("deep", leafKey, (issuer, issuerKey))
        self.tlsAttempt(self.write("deep.pem", certificatePEM(leaf, *chain)),
                        self.write("deep.key", keyPEM(leafKey)))  # fmt: skip

    def badSignature(self) -> None:
        key = newKey()
        der = bytearray(
            makeCertificate("forged", key, (self.ca, self.caKey)).public_bytes(
                serialization.Encoding.DER
            )
        )
        der[-5] ^= 0x55  # in the signature
        forged = x509.load_der_x509_certificate(bytes(der))
        self.tlsAttempt(self.write("forged.pem", certificatePEM(forged)),
                        self.write("forged.key", keyPEM(key)))  # fmt: skip

    def hugeExtension(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "huge")])
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc)
        huge = (
            x509.CertificateBuilder().subject_name(name).issuer_name(self.ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x00" * 60_000), critical=True)
            .sign(self.caKey, hashes.SHA256())  # type: ignore[arg-type]
        )  # fmt: skip
        self.tlsAttempt(self.write("huge.pem", certificatePEM(huge)),
                        self.write("huge.key", keyPEM(key)))  # fmt: skip

    def tlslite(self, key: bytes, certificate: Callable[[bytes], bytes] = bytes) -> bytes:
        """
        tlslite-ng (TLS 1.2: its TLS 1.3 client authentication with ECDSA
        does not interoperate with OpenSSL 4) presenting the client
        certificate, its DER changed by C{certificate}, in its Certificate
        message, and signing CertificateVerify with C{key}.

        @return: the echo of C{b"hello"}, or C{b""} if refused.
        """
        from tlslite.api import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey

        with open(os.path.join(self.pki, "client.crt")) as f:
            chain = X509CertChain()
            chain.parsePemList(f.read())
        leaf = chain.x509List[0]
        leaf.bytes = bytearray(certificate(bytes(leaf.bytes)))
        settings = HandshakeSettings()
        settings.minVersion = settings.maxVersion = (3, 3)
        sock = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=DEADLINE)
        connection = TLSConnection(sock)
        try:
            connection.handshakeClientCert(
                chain, parsePEMKey(key.decode(), private=True), settings=settings
            )
            connection.write(b"hello")
            return bytes(connection.read(max=5))
        except Exception:  # tlslite's alerts and closes: refused
            return b""
        finally:
            sock.close()

    def wrongKeyCertificateVerify(self) -> None:
        self.assertEqual(self.tlslite(keyPEM(newKey())), b"")

    def certificateMessage(self, change: Callable[[bytes], bytes]) -> Callable[[], None]:
        """
        A Certificate message whose certificate's bytes are changed.
        """
        return lambda: self.assertEqual(self.tlslite(self.clientKey(), change), b"")

    def test_hostileHandshakes(self) -> None:
        """
        Every case is rejected with a reason, the daemon stays up, and a
        transfer under way meanwhile arrives intact.
        """
        cases: list[tuple[str, Callable[[], None], str]] = [
            ("truncated ClientHello", lambda: raw(self.daemon.port, b"\x16\x03\x01\x02\x00" + os.urandom(100)), "closed before handshake"),
            ("oversized record", lambda: raw(self.daemon.port, b"\x16\x03\x01\xff\xff" + os.urandom(20_000)), "not TLS"),
            ("nonsense ClientHello", lambda: raw(self.daemon.port, b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c" + os.urandom(60)), "TLS error"),
            ("application data first", lambda: raw(self.daemon.port, b"\x17\x03\x03\x00\x10" + os.urandom(16)), "unexpected message"),
            ("SSLv2 hello", lambda: raw(self.daemon.port, b"\x80\x2e\x01\x00\x02\x00\x15" + os.urandom(46)), "not TLS"),
            ("HTTP", lambda: raw(self.daemon.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "not TLS"),
            ("chain longer than --verify-depth", self.chainTooLong, "certificate chain too long"),
            ("certificate signature does not match", self.badSignature, "certificate signature failure"),
            ("critical huge extension", self.hugeExtension, "unhandled critical extension"),
            ("CertificateVerify by the wrong key", self.wrongKeyCertificateVerify, "bad signature"),
            ("truncated certificate in the Certificate message",
             self.certificateMessage(lambda der: der[:100]), "ASN1"),
            ("oversized Certificate message (120 KB)",
             self.certificateMessage(lambda der: der + os.urandom(120_000)), "excessive message size"),
            ("nonsense in the Certificate message",
             self.certificateMessage(lambda der: os.urandom(400)), "ASN1|TLS error"),
        ]  # fmt: skip
        payload = os.urandom(16 * MiB)
        received = hashlib.sha256()
        failures: list[BaseException] = []

        def transfer() -> None:
            try:
                with pkiClient(self.daemon.port, self.pki) as sock:
                    for start in range(0, len(payload), 256 * 1024):
                        chunk = payload[start : start + 256 * 1024]
                        sock.sendall(chunk)
                        received.update(receiveExactly(sock, len(chunk)))
            except BaseException as e:
                failures.append(e)

        mover = threading.Thread(target=transfer)
        mover.start()
        reasons = []
        for number, (name, attack, expected) in enumerate(cases, 1):
            attack()
            [reason] = self.daemon.waitForRejections(number)[number - 1 :]
            reasons.append(f"{name}: {reason}")
            if expected:
                self.assertRegex(reason, expected, name)
        self.assertEqual(self.tlslite(self.clientKey()), b"hello")  # the tool itself works
        mover.join(120)
        self.assertEqual(failures, [])
        self.assertEqual(received.hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertIsNone(self.daemon.process.poll())
        self.assertNotIn("Traceback", self.daemon.log())
        print(f"\n{len(cases)} hostile handshakes, each rejected:", *reasons, sep="\n  ")
