"""
Black-box tests: a real C{twistd mtlsd} process, and real TLS peers (the
C{mtlsd} command, C{openssl s_client}, Python's C{ssl} module) talking to
it.  Every key and certificate is made at test time.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import random
import re
import socket
import stat
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mtlsd._pki import CLIENT_AUTH, SERVER_AUTH, certificatePEM, keyPEM, makeCertificate, newKey

from ._process import (
    OPENSSL,
    TWISTD,
    Daemon,
    environment,
    mtlsd,
    openssl,
    pkiClient,
    readUntil,
    receiveExactly,
    recipeCertificate,
    run,
    tlsClient,
    waitUntilClosed,
)

PKI_FILES = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "crl.pem")
HELLO = b"Hello, world!"


def fingerprint(path: str) -> str:
    """
    @return: the SHA-256 fingerprint (lowercase hex) of the certificate in
        C{path}.
    """
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).fingerprint(hashes.SHA256()).hex()


def writeCertificate(
    directory: str,
    name: str,
    caDirectory: str | None,
    *,
    notBefore: datetime.datetime,
    days: int,
    usage: x509.ObjectIdentifier = CLIENT_AUTH,
    names: tuple[str, ...] = (),
) -> tuple[str, str]:
    """
    Write C{name.crt} and C{name.key} with the given validity, signed by the
    CA of the development PKI in C{caDirectory} (or self-signed if L{None}).

    @return: the certificate's and the key's paths.
    """
    issuer = None
    if caDirectory is not None:
        with open(os.path.join(caDirectory, "ca.crt"), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(caDirectory, "ca.key"), "rb") as f:
            caKey = serialization.load_pem_private_key(f.read(), None)
        issuer = (ca, caKey)
    key = newKey()
    certificate = makeCertificate(
        name,
        key,
        issuer,  # type: ignore[arg-type]
        usages=[usage],
        names=names,
        notBefore=notBefore,
        days=days,
    )
    certificatePath = os.path.join(directory, f"{name}.crt")
    keyPath = os.path.join(directory, f"{name}.key")
    with open(certificatePath, "wb") as f:
        f.write(certificatePEM(certificate))
    with open(keyPath, "wb") as f:
        f.write(keyPEM(key))
    return certificatePath, keyPath


class DaemonTestMixin:
    """
    Start C{twistd mtlsd} in a fresh directory and stop it after the test.
    """

    def workDirectory(self) -> str:
        directory = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(directory)
        return directory

    def startDaemon(self, directory: str, *args: str, twist: bool = False) -> Daemon:
        """
        Start the daemon on any free port (C{--port 0}) and wait until it
        says which one it listens on.
        """
        daemon = Daemon(directory, ["--port", "0", *args], twist=twist)
        self.addCleanup(daemon.stop)  # type: ignore[attr-defined]
        daemon.waitForListening()
        return daemon

    def requireOpenSSL(self) -> None:
        if OPENSSL is None:
            raise SkipTest("the openssl command is not installed")

    def assertOneLine(self, output: bytes, prefix: str, *needles: str, alone: bool = True) -> str:
        """
        Assert C{output} has exactly one line starting with C{prefix}, that
        it contains every one of C{needles}, and that there is no traceback.

        @param alone: whether that line must be all of C{output}.
        @return: that line.
        """
        text = output.decode("utf-8", "replace")
        self.assertNotIn("Traceback", text)  # type: ignore[attr-defined]
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        self.assertEqual(len(lines), 1, text)  # type: ignore[attr-defined]
        if alone:
            self.assertEqual(len(text.splitlines()), 1, text)  # type: ignore[attr-defined]
        for needle in needles:
            self.assertIn(needle, lines[0])  # type: ignore[attr-defined]
        return lines[0]


class DevelopmentPKITests(DaemonTestMixin, SynchronousTestCase):
    """
    Without certificate options the daemon makes and uses a development PKI,
    and the C{mtlsd connect} command it suggests works as printed.
    """

    def test_createsPKIAndConnectWorks(self) -> None:
        """
        C{twistd -n mtlsd --port P} in an empty directory writes the seven
        files of C{mtlsd-pki/} (keys readable by the owner only), logs the
        C{mtlsd connect} command, and that command echoes C{hello}; with
        C{-v} it describes the server on standard error.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        pki = os.path.join(directory, "mtlsd-pki")
        self.assertEqual(sorted(os.listdir(pki)), sorted(PKI_FILES))
        for name in ("ca.key", "server.key", "client.key"):
            mode = stat.S_IMODE(os.stat(os.path.join(pki, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        daemon.waitForLog(re.escape(f"try: echo hello | mtlsd connect localhost:{daemon.port}"))

        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hello\n")
        self.assertEqual((result.returncode, result.stdout), (0, b"hello\n"), result.stderr)

        result = mtlsd("connect", f"localhost:{daemon.port}", "-v", cwd=directory, input=b"x")
        self.assertEqual((result.returncode, result.stdout), (0, b"x"), result.stderr)
        self.assertIn(b"CN=", result.stderr)
        self.assertIn(b"localhost", result.stderr)

        accepted = daemon.accepted()
        self.assertEqual([cn for _, cn, _, _ in accepted], ["client", "client"])
        self.assertEqual(accepted[0][2], fingerprint(os.path.join(pki, "client.crt")))
        daemon.waitForLog(r"closed 127\.0\.0\.1:\d+: CN=client in=6 out=6 duration=")

    def test_twistServes(self) -> None:
        """
        C{twist mtlsd --port P} serves the same echo on the development PKI.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, twist=True)
        daemon.waitForLog(re.escape(f"mtlsd connect localhost:{daemon.port}"))
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hello\n")
        self.assertEqual((result.returncode, result.stdout), (0, b"hello\n"), result.stderr)


class HalfCloseTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{mtlsd connect} sends close_notify at the end of its input and still
    gets the server's whole answer.
    """

    # Regression: Twisted's TLS transport aggregates small writes until the
    # next reactor turn, and used to drop the echo's reply to bytes that came
    # with the client's close_notify (mtlsd._server._TLSTransport).
    def test_inputFromFile(self) -> None:
        """
        C{mtlsd connect < file}: the whole input is sent at once, followed by
        close_notify; the echo still comes back.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        path = os.path.join(directory, "hello.txt")
        with open(path, "wb") as f:
            f.write(b"hello\n")
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, stdinPath=path)
        self.assertEqual((result.returncode, result.stdout), (0, b"hello\n"), result.stderr)

    def test_largeInputIntact(self) -> None:
        """
        A megabyte through C{mtlsd connect} and the echo app comes back
        whole, and the daemon counts every byte both ways.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        payload = random.Random(7).randbytes(1_000_000)
        path = os.path.join(directory, "payload.bin")
        with open(path, "wb") as f:
            f.write(payload)
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, stdinPath=path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            hashlib.sha256(result.stdout).hexdigest(), hashlib.sha256(payload).hexdigest()
        )
        daemon.waitForLog("in=1000000 out=1000000")


class ClassicRecipeTests(DaemonTestMixin, SynchronousTestCase):
    """
    The classic recipe: self-signed certificates from C{openssl req}, the
    clients' certificates concatenated into one trusted bundle.
    """

    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()
        self.serverCert, self.serverKey = recipeCertificate(self.directory, "server", "example.com")
        self.client1 = recipeCertificate(self.directory, "client1", "client1")
        self.client2 = recipeCertificate(self.directory, "client2", "client2", ec=True)
        with open(os.path.join(self.directory, "clients.pem"), "wb") as bundle:
            for path in (self.client1[0], self.client2[0]):
                with open(path, "rb") as f:
                    bundle.write(f.read())

    def startRecipeServer(self, certificate: str, key: str) -> Daemon:
        return self.startDaemon(
            self.directory, "--cert", certificate, "--key", key, "--client-certs", "clients.pem"
        )

    def test_pythonClients(self) -> None:
        """
        The recipe's Python client, with an RSA or an ECDSA certificate from
        the bundle, gets its bytes echoed; the daemon logs each client's CN
        and fingerprint, and the bytes of each connection when it closes.
        """
        daemon = self.startRecipeServer(self.serverCert, self.serverKey)
        for certificate, key in (self.client1, self.client2):
            with tlsClient(daemon.port, certificate, key, self.serverCert, "example.com") as s:
                s.sendall(HELLO)
                self.assertEqual(receiveExactly(s, len(HELLO)), HELLO)
        daemon.waitForLog(r"closed 127\.0\.0\.1:\d+: CN=client\d in=13 out=13 duration=", 2)
        accepted = {cn: sha256 for _, cn, sha256, _ in daemon.accepted()}
        self.assertEqual(
            accepted,
            {"client1": fingerprint(self.client1[0]), "client2": fingerprint(self.client2[0])},
        )
        self.assertNotEqual(accepted["client1"], accepted["client2"])

    def test_connectExplainsMissingSubjectAltName(self) -> None:
        """
        C{mtlsd connect} refuses the recipe's server certificate, which has
        its name only in the CN, with one line saying how to regenerate it.
        """
        daemon = self.startRecipeServer(self.serverCert, self.serverKey)
        cert, key = self.client1
        result = mtlsd(
            "connect",
            f"127.0.0.1:{daemon.port}",
            *("--cert", cert, "--key", key, "--ca", self.serverCert),
            *("--servername", "example.com"),
            cwd=self.directory,
            input=b"hello\n",
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, b"")
        self.assertOneLine(
            result.stderr,
            "mtlsd connect: ",
            "subjectAltName",
            "-addext subjectAltName=DNS:example.com",
        )

    def test_connectChecksSubjectAltName(self) -> None:
        """
        With a server certificate made with C{-addext subjectAltName=...},
        C{mtlsd connect} works by DNS name (C{--servername}) and by IP
        address, and refuses a name the certificate is not for.
        """
        certificate, key = recipeCertificate(
            self.directory,
            "server-san",
            "example.com",
            subjectAltName="DNS:example.com,IP:127.0.0.1",
        )
        daemon = self.startRecipeServer(certificate, key)
        clientArgs = ("--cert", self.client1[0], "--key", self.client1[1], "--ca", certificate)
        address = f"127.0.0.1:{daemon.port}"

        for extra in (("--servername", "example.com"), ()):
            result = mtlsd(
                "connect", address, *clientArgs, *extra, cwd=self.directory, input=b"hello\n"
            )
            self.assertEqual((result.returncode, result.stdout), (0, b"hello\n"), result.stderr)

        result = mtlsd(
            "connect",
            address,
            *clientArgs,
            *("--servername", "other.example"),
            cwd=self.directory,
            input=b"hello\n",
        )
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(result.stderr, "mtlsd connect: ", "not valid for", "other.example")


class OpenSSLClientTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{openssl s_client} against the daemon on its development PKI.
    """

    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()
        self.daemon = self.startDaemon(self.directory)
        self.address = f"127.0.0.1:{self.daemon.port}"

    def startClient(self, *args: str) -> subprocess.Popen[bytes]:
        """
        Start C{openssl s_client} (not waiting for it to finish: with
        C{-ign_eof} it runs until the server closes or it is terminated).
        """
        assert OPENSSL is not None
        process = subprocess.Popen(
            [OPENSSL, "s_client", "-connect", self.address, *args],
            cwd=self.directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=environment(),
        )

        def stop() -> None:
            process.stdin.close()
            if process.poll() is None:
                process.terminate()
            process.wait(15)
            process.stdout.close()

        self.addCleanup(stop)
        return process

    def test_echoWithClientCertificate(self) -> None:
        """
        C{openssl s_client} with the development client certificate gets
        C{ping} echoed.
        """
        process = self.startClient(
            *("-cert", "mtlsd-pki/client.crt", "-key", "mtlsd-pki/client.key"),
            *("-CAfile", "mtlsd-pki/ca.crt", "-verify_return_error", "-quiet", "-ign_eof"),
        )
        process.stdin.write(b"ping\n")
        process.stdin.flush()
        self.assertEqual(readUntil(process.stdout.fileno(), b"ping\n"), b"ping\n")
        self.daemon.waitForLog(r"accepted 127\.0\.0\.1:\d+: CN=client sha256=")

    def test_keyUpdate(self) -> None:
        """
        A TLS 1.3 client's key update asking for the daemon's (C{K} in
        C{openssl s_client}) does not disturb the connection: data flows
        both ways after it, on either TLS transport.
        """
        assert OPENSSL is not None
        process = subprocess.Popen(
            [OPENSSL, "s_client", "-connect", self.address, "-tls1_3"]
            + ["-cert", "mtlsd-pki/client.crt", "-key", "mtlsd-pki/client.key"]
            + ["-CAfile", "mtlsd-pki/ca.crt", "-verify_return_error"],
            cwd=self.directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # where s_client says KEYUPDATE
            env=environment(),
        )
        self.addCleanup(lambda: (process.kill(), process.wait(15), process.stdout.close()))
        out = process.stdout.fileno()
        process.stdin.write(b"before\n")
        process.stdin.flush()
        readUntil(out, b"before\n")
        process.stdin.write(b"K\n")  # a key update, the peer's requested
        process.stdin.flush()
        readUntil(out, b"KEYUPDATE")
        for _ in range(3):
            process.stdin.write(b"after\n")
            process.stdin.flush()
            readUntil(out, b"after\n")
        process.stdin.close()
        self.daemon.waitForLog(r"closed 127\.0\.0\.1:\d+: CN=client in=25 out=25 ")
        self.assertEqual(self.daemon.rejections(), [])

    def test_noClientCertificate(self) -> None:
        """
        C{openssl s_client} without a certificate fails, gets nothing back,
        and the daemon logs C{no client certificate}.
        """
        assert OPENSSL is not None
        result = run(
            [
                OPENSSL,
                "s_client",
                "-connect",
                self.address,
                "-CAfile",
                "mtlsd-pki/ca.crt",
                "-quiet",
            ],
            self.directory,
            input=b"ping\n",
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn(b"ping", result.stdout)
        self.assertEqual(self.daemon.waitForRejections(1), ["no client certificate"])

    def test_advertisesClientCANames(self) -> None:
        """
        The server's certificate request lists the trusted CA's subject as
        an acceptable client certificate CA name.
        """
        process = self.startClient(
            *("-cert", "mtlsd-pki/client.crt", "-key", "mtlsd-pki/client.key"),
            *("-CAfile", "mtlsd-pki/ca.crt", "-showcerts", "-ign_eof"),
        )
        output = readUntil(process.stdout.fileno(), b"Verify return code")
        self.assertRegex(
            output, rb"Acceptable client certificate CA names\r?\nCN = mtlsd development CA\r?\n"
        )


class RejectionTests(DaemonTestMixin, SynchronousTestCase):
    """
    Clients without a trusted, currently valid certificate are turned away,
    each with its reason logged, and the daemon keeps serving.
    """

    def test_untrustedClientsRejected(self) -> None:
        """
        No certificate, a self-signed one, one from another CA, an expired
        one and a not-yet-valid one: C{mtlsd connect} exits 1 saying the
        server rejected the certificate, the daemon logs one C{rejected}
        line with OpenSSL's reason for each, then a good client still gets
        its echo.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        pki = os.path.join(directory, "mtlsd-pki")
        self.assertEqual(
            mtlsd("pki", "issue", "stranger", "--self-signed", cwd=directory).returncode, 0
        )
        self.assertEqual(mtlsd("pki", "init", "other", cwd=directory).returncode, 0)
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = writeCertificate(
            directory, "expired", pki, notBefore=now - datetime.timedelta(days=10), days=1
        )
        future = writeCertificate(
            directory, "future", pki, notBefore=now + datetime.timedelta(days=1), days=30
        )
        serverOnly = writeCertificate(
            directory, "serveronly", pki, notBefore=now, days=30, usage=SERVER_AUTH
        )
        ca = ("--ca", os.path.join(pki, "ca.crt"))
        clients = [
            (("--pki", "nowhere"), ["no client certificate"]),
            (
                ("--cert", "mtlsd-pki/stranger.crt", "--key", "mtlsd-pki/stranger.key"),
                ["self-signed certificate"],
            ),
            (
                ("--cert", "other/client.crt", "--key", "other/client.key"),
                [
                    "unable to get local issuer certificate",
                    "self-signed certificate in certificate chain",
                ],
            ),
            (("--cert", expired[0], "--key", expired[1]), ["certificate has expired"]),
            (("--cert", future[0], "--key", future[1]), None),
            (
                ("--cert", serverOnly[0], "--key", serverOnly[1]),
                # OpenSSL 4 / OpenSSL 3.0 wording
                ["unsuitable certificate purpose", "unsupported certificate purpose"],
            ),
        ]
        for number, (args, reasons) in enumerate(clients, 1):
            result = mtlsd(
                "connect", f"localhost:{daemon.port}", *args, *ca, cwd=directory, input=b"hi\n"
            )
            self.assertEqual((result.returncode, result.stdout), (1, b""), args)
            # Without a certificate (--pki nowhere) a warning comes first.
            self.assertOneLine(
                result.stderr,
                f"mtlsd connect: localhost:{daemon.port}: ",
                "rejected this client's certificate",
                alone=number > 1,
            )
            logged = daemon.waitForRejections(number)
            self.assertEqual(len(logged), number, logged)
            if reasons is None:
                self.assertTrue(logged[-1].startswith("certificate is not yet valid"), logged)
            else:
                self.assertIn(logged[-1], reasons)

        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"still here\n")
        self.assertEqual((result.returncode, result.stdout), (0, b"still here\n"), result.stderr)
        self.assertEqual(len(daemon.rejections()), len(clients))
        self.assertEqual([cn for _, cn, _, _ in daemon.accepted()], ["client"])


class GarbageTests(DaemonTestMixin, SynchronousTestCase):
    """
    Plaintext, random bytes and silence are turned away without disturbing
    an established connection.
    """

    def test_garbageAndSilenceRejected(self) -> None:
        """
        An HTTP request and 1 KiB of random bytes are closed as C{not TLS};
        a client that sends nothing is closed after C{--handshake-timeout 1}
        as C{handshake timeout}; a TLS client connected before all of them
        still exchanges data afterwards.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--handshake-timeout", "1")
        pki = os.path.join(directory, "mtlsd-pki")
        good = pkiClient(daemon.port, pki)
        self.addCleanup(good.close)
        good.sendall(b"before")
        self.assertEqual(receiveExactly(good, 6), b"before")

        # A fixed seed: the same "random" bytes every run.
        noise = random.Random(1).randbytes(1024)
        for number, garbage in enumerate([b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", noise], 1):
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=15) as s:
                s.sendall(garbage)
                waitUntilClosed(s, 10)
            self.assertEqual(daemon.waitForRejections(number), ["not TLS"] * number)

        with socket.create_connection(("127.0.0.1", daemon.port), timeout=15) as s:
            started = time.monotonic()
            # Well under the default timeout of 10 seconds.
            waitUntilClosed(s, 6)
            elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 0.9)
        self.assertEqual(daemon.waitForRejections(3)[-1], "handshake timeout")

        good.sendall(b"after")
        self.assertEqual(receiveExactly(good, 5), b"after")
        self.assertEqual(len(daemon.rejections()), 3)


class BadConfigurationTests(DaemonTestMixin, SynchronousTestCase):
    """
    Unusable files stop the daemon at start-up with one line naming the
    file, and no traceback.
    """

    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()
        recipeCertificate(self.directory, "server", "example.com")
        recipeCertificate(self.directory, "client1", "client1")
        recipeCertificate(self.directory, "client2", "client2", ec=True)

    def assertStartFails(self, *args: str, needle: str) -> None:
        """
        Assert that C{twistd mtlsd} with C{args} exits non-zero, printing
        one C{mtlsd: } line that contains C{needle} and no traceback.
        """
        result = run(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "mtlsd", "--port", "0", *args],
            self.directory,
        )
        self.assertNotEqual(result.returncode, 0)
        # twistd may log before the error, so the line need not be alone.
        self.assertOneLine(result.stdout + result.stderr, "mtlsd: ", needle, alone=False)

    def test_missingClientCertificates(self) -> None:
        """
        A C{--client-certs} file that does not exist is named.
        """
        self.assertStartFails(
            *("--cert", "server.crt", "--key", "server.key", "--client-certs", "missing.pem"),
            needle="missing.pem",
        )

    def test_certificateFileWithoutCertificate(self) -> None:
        """
        A C{--cert} file without a PEM certificate is named.
        """
        with open(os.path.join(self.directory, "notacert.pem"), "w") as f:
            f.write("just some text\n")
        self.assertStartFails(
            *("--cert", "notacert.pem", "--key", "server.key", "--client-certs", "client1.crt"),
            needle="notacert.pem",
        )

    def test_keyDoesNotMatchCertificate(self) -> None:
        """
        A C{--key} that is not the certificate's is named.
        """
        self.assertStartFails(
            *("--cert", "server.crt", "--key", "client1.key", "--client-certs", "client1.crt"),
            needle="client1.key",
        )

    def test_encryptedKey(self) -> None:
        """
        An encrypted C{--key} is named.
        """
        openssl(
            *("pkey", "-in", "server.key", "-aes256", "-passout", "pass:x"),
            *("-out", "encrypted.key"),
            cwd=self.directory,
        )
        self.assertStartFails(
            *("--cert", "server.crt", "--key", "encrypted.key", "--client-certs", "client1.crt"),
            needle="encrypted.key",
        )

    def test_brokenCertificateInBundle(self) -> None:
        """
        A C{--client-certs} bundle whose second certificate has a corrupted
        base64 character is named; it is not silently skipped.
        """
        with open(os.path.join(self.directory, "client2.crt"), "rb") as f:
            lines = f.read().splitlines(keepends=True)
        middle = len(lines) // 2
        lines[middle] = lines[middle][:10] + b"*" + lines[middle][11:]
        with open(os.path.join(self.directory, "client1.crt"), "rb") as f:
            first = f.read()
        with open(os.path.join(self.directory, "broken.pem"), "wb") as f:
            f.write(first + b"".join(lines))
        self.assertStartFails(
            *("--cert", "server.crt", "--key", "server.key", "--client-certs", "broken.pem"),
            needle="broken.pem",
        )

    def test_certWithoutClientCerts(self) -> None:
        """
        C{--cert} without C{--client-certs} is a usage error that says so.
        """
        result = run(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "mtlsd", "--port", "0"]
            + ["--cert", "server.crt", "--key", "server.key"],
            self.directory,
        )
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn(b"Traceback", output)
        self.assertIn(b"--client-certs", output.splitlines()[-1])

    def test_expiredServerCertificateWarns(self) -> None:
        """
        An expired server certificate does not stop the daemon, but it logs
        a warning saying EXPIRED.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate, key = writeCertificate(
            self.directory,
            "old-server",
            None,
            notBefore=now - datetime.timedelta(days=30),
            days=1,
            usage=SERVER_AUTH,
            names=("localhost",),
        )
        daemon = self.startDaemon(
            self.directory, "--cert", certificate, "--key", key, "--client-certs", "client1.crt"
        )
        daemon.waitForLog("EXPIRED")
        self.assertIsNone(daemon.process.poll())


class CommandLineTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{mtlsd pki} and C{mtlsd inspect}, checked against C{openssl x509}.
    """

    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()
        result = mtlsd("pki", "init", "d", cwd=self.directory)
        self.assertEqual(result.returncode, 0, result.stderr)

    def x509(self, path: str, *args: str) -> str:
        return openssl("x509", "-in", path, "-noout", *args, cwd=self.directory).stdout.decode()

    def test_issueAndInspect(self) -> None:
        """
        C{mtlsd pki issue} writes a CA-signed certificate with the given
        SANs and a private key only its owner can read; C{mtlsd inspect}
        shows subject, issuer, SANs, serial and the same SHA-256
        fingerprint as C{openssl x509}, for every file given.
        """
        result = mtlsd(
            *("pki", "issue", "--pki", "d", "alice"),
            *("--dns", "alice.example", "--uri", "spiffe://x/alice"),
            cwd=self.directory,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        key = os.path.join(self.directory, "d", "alice.key")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "d", "alice.crt")))

        result = mtlsd("inspect", "d/alice.crt", "d/ca.crt", cwd=self.directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        output = result.stdout.decode()
        alice, ca = output.split("d/ca.crt [1/1]")
        self.assertIn("d/alice.crt [1/1]", alice)
        self.assertRegex(alice, r"subject: +CN=alice\n")
        self.assertRegex(alice, r"issuer: +CN=mtlsd development CA\n")
        self.assertIn("DNS:alice.example", alice)
        self.assertIn("URI:spiffe://x/alice", alice)
        self.assertRegex(ca, r"subject: +CN=mtlsd development CA\n")
        for part, path in ((alice, "d/alice.crt"), (ca, "d/ca.crt")):
            self.assertNotIn("EXPIRED", part)
            expected = self.x509(path, "-fingerprint", "-sha256").strip().split("=", 1)[1]
            self.assertRegex(part, rf"\n +sha256: +{expected.replace(':', '').lower()}\n")
            serial = int(self.x509(path, "-serial").strip().split("=", 1)[1], 16)
            found = re.search(r"serial: +([0-9a-f]+)\n", part)
            assert found is not None
            self.assertEqual(int(found.group(1), 16), serial)

    def test_inspectFlagsExpired(self) -> None:
        """
        C{mtlsd inspect} says EXPIRED for an expired certificate.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        writeCertificate(
            self.directory,
            "old",
            os.path.join(self.directory, "d"),
            notBefore=now - datetime.timedelta(days=30),
            days=1,
        )
        result = mtlsd("inspect", "old.crt", cwd=self.directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout.decode(), r"validity: .*EXPIRED")

    def test_issueNegativeDays(self) -> None:
        """
        C{mtlsd pki issue --days 0} (or negative) is refused with one line,
        never a traceback, and writes nothing.
        """
        for days in ("0", "-1"):
            result = mtlsd("pki", "issue", "--pki", "d", "bob", "--days", days, cwd=self.directory)
            self.assertEqual(result.returncode, 1)
            self.assertOneLine(result.stderr, "mtlsd pki: --days must be from 1 to 36500")
        self.assertFalse(os.path.exists(os.path.join(self.directory, "d", "bob.crt")))

    def test_inspectNotACertificate(self) -> None:
        """
        C{mtlsd inspect} of a file without a certificate exits 1 with one
        line naming it.
        """
        with open(os.path.join(self.directory, "junk.txt"), "w") as f:
            f.write("not a certificate\n")
        result = mtlsd("inspect", "junk.txt", cwd=self.directory)
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(result.stderr, "mtlsd inspect: ", "junk.txt")

    def test_extendedKeyUsageAndNames(self) -> None:
        """
        The development PKI's client certificate is for TLS client
        authentication; the server's for TLS server authentication, for
        localhost, 127.0.0.1 and ::1.
        """
        client = self.x509("d/client.crt", "-ext", "extendedKeyUsage")
        self.assertIn("TLS Web Client Authentication", client)
        self.assertNotIn("TLS Web Server Authentication", client)
        server = self.x509("d/server.crt", "-ext", "extendedKeyUsage,subjectAltName")
        self.assertIn("TLS Web Server Authentication", server)
        self.assertIn("DNS:localhost", server)
        self.assertIn("IP Address:127.0.0.1", server)
        self.assertRegex(server, r"IP Address:(::1|0:0:0:0:0:0:0:1)\b")
