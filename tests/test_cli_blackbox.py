"""
Black-box tests of the C{mtlsd} command as a user meets it: real
processes, their output closed under them, a port already taken, typing
mistakes, and servers that refuse the client without saying why.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import threading
import time
from importlib.metadata import version

from twisted.trial.unittest import SynchronousTestCase

from ._process import DEADLINE, MTLSD, Background, environment, mtlsd, openssl
from .test_daemon import DaemonTestMixin

# What a shell reports for a command killed by SIGPIPE, as cat is when its
# reader goes away.
SIGPIPE_STATUS = 141


def startWithClosedOutput(args: list[str], cwd: str) -> subprocess.Popen[bytes]:
    """
    Start C{mtlsd ARGS} with its standard output a pipe whose reading end is
    closed at once, as in C{mtlsd ... | true}: the reader is gone before the
    command writes anything (Python takes far longer to start than this
    takes to close).
    """
    process = subprocess.Popen(
        [MTLSD, *args],
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    assert process.stdout is not None
    process.stdout.close()
    return process


def feed(process: subprocess.Popen[bytes], data: bytes) -> threading.Thread:
    """
    Write C{data} to C{process}'s standard input from a thread, then close
    it; the process may exit before reading it all.
    """
    assert process.stdin is not None
    stdin = process.stdin

    def write() -> None:
        try:
            stdin.write(data)
            stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return writer


def waitForExit(
    case: SynchronousTestCase, process: subprocess.Popen[bytes], within: float
) -> bytes:
    """
    Wait for C{process} to exit, failing the test (and killing it) if it has
    not exited C{within} seconds.

    @return: its standard error.
    """
    try:
        process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(DEADLINE)
        assert process.stderr is not None
        raise case.failureException(
            f"still running {within}s after its reader left; stderr: {process.stderr.read()!r}"
        ) from None
    assert process.stderr is not None
    with process.stderr:
        return process.stderr.read()


class OutputClosedTests(DaemonTestMixin, SynchronousTestCase):
    """
    A command whose standard output goes away ends quietly, as C{cat} does:
    at once, with status 141, without a traceback.
    """

    def test_connectOutputClosedWhileSending(self) -> None:
        """
        C{head -c 1000000 /dev/zero | mtlsd connect ... | head -c 10}: once
        the reader has its 10 bytes and exits, C{mtlsd connect} ends within
        2 seconds, with status 141 and nothing on standard error.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        process = subprocess.Popen(
            [MTLSD, "connect", f"localhost:{daemon.port}"],
            cwd=directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
        )
        self.addCleanup(process.kill)
        writer = feed(process, bytes(1_000_000))
        assert process.stdout is not None
        self.assertEqual(process.stdout.read(10), bytes(10))
        process.stdout.close()
        stderr = waitForExit(self, process, 2.0)
        self.assertEqual((process.returncode, stderr), (SIGPIPE_STATUS, b""))
        writer.join(DEADLINE)

    def test_connectOutputClosedBeforeAnswer(self) -> None:
        """
        C{echo hello | mtlsd connect ... | true}: the reader is gone before
        the answer comes; C{mtlsd connect} ends within 2 seconds, with status
        141 and nothing on standard error.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        started = time.monotonic()
        process = startWithClosedOutput(["connect", f"localhost:{daemon.port}"], directory)
        self.addCleanup(process.kill)
        feed(process, b"hello\n")
        stderr = waitForExit(self, process, 2.0 + (time.monotonic() - started))
        self.assertEqual((process.returncode, stderr), (SIGPIPE_STATUS, b""))

    def test_noTracebackWhenOutputClosed(self) -> None:
        """
        C{mtlsd inspect} and C{mtlsd pki init} with their output closed
        (C{| head -1}, C{| true}) exit 141 and print nothing: no
        C{BrokenPipeError} traceback, no "Exception ignored"; C{--help} and
        C{--version} print nothing either.
        """
        directory = self.workDirectory()
        self.assertEqual(mtlsd("pki", "init", cwd=directory).returncode, 0)
        certificates = sorted(
            os.path.join("mtlsd-pki", name)
            for name in os.listdir(os.path.join(directory, "mtlsd-pki"))
            if name.endswith(".crt")
        )
        # argparse ignores errors writing its help and version, and exits 0.
        for args, status in (
            (["inspect", *certificates], SIGPIPE_STATUS),
            (["pki", "init", "other"], SIGPIPE_STATUS),
            (["--help"], 0),
            (["--version"], 0),
        ):
            process = startWithClosedOutput(args, directory)
            self.addCleanup(process.kill)
            feed(process, b"")
            stderr = waitForExit(self, process, DEADLINE)
            self.assertEqual((process.returncode, stderr), (status, b""), args)


class TunnelTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{mtlsd tunnel} that cannot listen says so and exits.
    """

    def test_portTaken(self) -> None:
        """
        C{mtlsd tunnel --listen tcp:PORT} with PORT taken prints one line,
        C{mtlsd tunnel: cannot listen on tcp:PORT...}, and exits 1 at once
        (it used to hang until killed, then print a traceback).
        """
        directory = self.workDirectory()
        self.assertEqual(mtlsd("pki", "init", cwd=directory).returncode, 0)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            listen = f"tcp:{port}:interface=127.0.0.1"
            started = time.monotonic()
            result = mtlsd("tunnel", "--listen", listen, "--to", "localhost:1", cwd=directory)
            elapsed = time.monotonic() - started
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(result.stderr, f"mtlsd tunnel: cannot listen on {listen}: ", "in use")
        self.assertLess(elapsed, 5.0)


class UsageTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{--version}, and mistakes in options, answered with the usage that
    helps.
    """

    def test_version(self) -> None:
        """
        C{mtlsd --version} prints the installed distribution's version.
        """
        result = mtlsd("--version", cwd=self.workDirectory())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode(), f"mtlsd {version('mtlsd')}\n")

    def test_typoInSubcommandOption(self) -> None:
        """
        An unknown option after a subcommand is reported with that
        subcommand's usage; one before it, with the top-level usage.
        """
        directory = self.workDirectory()
        for args, usage, error in [
            (["connect", "--bogus", "localhost:1"], "usage: mtlsd connect ", "mtlsd connect: "),
            (
                ["connect", "localhost:1", "--certs", "x"],
                "usage: mtlsd connect ",
                "mtlsd connect: ",
            ),
            (
                ["pki", "issue", "alice", "--dnss", "x"],
                "usage: mtlsd pki issue ",
                "mtlsd pki issue: ",
            ),
            (["inspect", "--bogus", "x.pem"], "usage: mtlsd inspect ", "mtlsd inspect: "),
            (["--bogus", "inspect", "x.pem"], "usage: mtlsd [", "mtlsd: "),
        ]:
            result = mtlsd(*args, cwd=directory)
            self.assertEqual((result.returncode, result.stdout), (2, b""), args)
            text = result.stderr.decode()
            self.assertTrue(text.startswith(usage), (args, text))
            self.assertTrue(text.splitlines()[-1].startswith(error + "error: unrecognized"), text)


def dropAfterHandshake(pki: str, answer: bytes = b"") -> tuple[int, threading.Thread]:
    """
    A TLS server on the development PKI in C{pki} that, like Node's with
    C{rejectUnauthorized}, completes the handshake with one client, sends
    C{answer}, then drops the TCP connection without an alert or
    close_notify.

    @return: its port, and the thread that serves the one client.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(pki, "server.crt"), os.path.join(pki, "server.key"))
    context.load_verify_locations(os.path.join(pki, "ca.crt"))
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)

    def serve() -> None:
        with listener, listener.accept()[0] as raw:
            tls = context.wrap_socket(raw, server_side=True)
            if answer:
                tls.sendall(answer)
            # SSLSocket.shutdown drops the TLS state first: no close_notify.
            tls.shutdown(socket.SHUT_RDWR)
            tls.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    return listener.getsockname()[1], server


class RefusalTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{mtlsd connect} says why a server may not let it in: no certificate
    sent, or a server that drops the connection without a word.
    """

    def test_noCertificateWarns(self) -> None:
        """
        Without C{--cert} and without a development PKI, C{mtlsd connect}
        warns that it sends no client certificate before connecting; the
        server's refusal then still takes one line.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        result = mtlsd(
            *("connect", f"localhost:{daemon.port}", "--pki", "nowhere"),
            *("--ca", "mtlsd-pki/ca.crt"),
            cwd=directory,
            input=b"hello\n",
        )
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        warning, error = result.stderr.decode().splitlines()
        self.assertEqual(
            warning,
            "mtlsd connect: warning: no client certificate is sent (no --cert, and no"
            " development PKI in nowhere); most mutual-TLS servers will refuse this connection.",
        )
        self.assertOneLine(
            error.encode(),
            f"mtlsd connect: localhost:{daemon.port}: ",
            "rejected this client's certificate",
            "this client sent none",
        )

    def test_tunnelWithoutCertificateWarns(self) -> None:
        """
        C{mtlsd tunnel} without C{--cert} and development PKI warns at
        start-up, then listens.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        tunnel = Background(
            [MTLSD, "tunnel", "--listen", "tcp:0:interface=127.0.0.1"]
            + ["--to", f"localhost:{daemon.port}", "--pki", "nowhere", "--ca", "mtlsd-pki/ca.crt"],
            directory,
            os.path.join(directory, "tunnel.log"),
        )
        self.addCleanup(tunnel.stop)
        tunnel.waitForLog(r"mtlsd tunnel: 127\.0\.0\.1:\d+ -> ")
        self.assertRegex(
            tunnel.log(),
            r"^mtlsd tunnel: warning: no client certificate is sent \(no --cert, and no"
            r" development PKI in nowhere\)",
        )

    def test_refusedServerGetsAlert(self) -> None:
        """
        When C{mtlsd connect} refuses the server's certificate for its name,
        it says so in its one line and sends a fatal alert, as OpenSSL's
        clients do: the daemon logs C{client sent alert: ... bad
        certificate}, not C{closed before handshake}.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        result = mtlsd(
            *("connect", f"localhost:{daemon.port}", "--servername", "other.example"),
            cwd=directory,
            input=b"hello\n",
        )
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(
            result.stderr,
            f"mtlsd connect: localhost:{daemon.port}: ",
            "the server certificate is not valid for other.example; use --servername",
        )
        [reason] = daemon.waitForRejections(1)
        self.assertTrue(reason.startswith("client sent alert: "), reason)
        self.assertIn("bad certificate", reason)

    def test_serverDropsAfterHandshake(self) -> None:
        """
        A server that completes the handshake and closes the TCP connection
        without an alert: C{mtlsd connect} says so in one line, and that it
        may not accept the client's certificate or could not serve the
        connection, instead of Twisted's "lost in a non-clean fashion".
        """
        directory = self.workDirectory()
        self.assertEqual(mtlsd("pki", "init", cwd=directory).returncode, 0)
        port, server = dropAfterHandshake(os.path.join(directory, "mtlsd-pki"))
        result = mtlsd("connect", f"localhost:{port}", cwd=directory, input=b"hello\n")
        server.join(DEADLINE)
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(
            result.stderr,
            f"mtlsd connect: localhost:{port}: ",
            "the server closed the connection without an alert right after the handshake,"
            " before sending anything (it may not accept this client's certificate, or"
            " could not serve the connection: see its log)",
        )

    def test_backendDown(self) -> None:
        """
        An mtlsd server that accepts the client, then aborts because its
        C{--forward} backend is down: C{mtlsd connect} says that the server
        closed without an alert right after the handshake and that it may
        not accept the certificate or could not serve the connection, and
        points to the server's log, which says which.
        """
        directory = self.workDirectory()
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            backend = closed.getsockname()[1]
        daemon = self.startDaemon(directory, "--forward", f"tcp:127.0.0.1:{backend}")
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hello\n")
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(
            result.stderr,
            f"mtlsd connect: localhost:{daemon.port}: ",
            "the server closed the connection without an alert right after the handshake,"
            " before sending anything (it may not accept this client's certificate, or"
            " could not serve the connection: see its log)",
        )
        daemon.waitForLog(r"\] accepted 127\.0\.0\.1:\d+: CN=client ")
        daemon.waitForLog(r"\] backend unavailable: ")

    def test_serverDropsAfterData(self) -> None:
        """
        Once the server has sent data, its close without close_notify is
        not blamed on the client's certificate.
        """
        directory = self.workDirectory()
        self.assertEqual(mtlsd("pki", "init", cwd=directory).returncode, 0)
        port, server = dropAfterHandshake(os.path.join(directory, "mtlsd-pki"), b"hi\n")
        result = mtlsd("connect", f"localhost:{port}", cwd=directory, input=b"hello\n")
        server.join(DEADLINE)
        self.assertEqual((result.returncode, result.stdout), (1, b"hi\n"))
        self.assertOneLine(
            result.stderr,
            f"mtlsd connect: localhost:{port}: ",
            "the server closed the connection without an alert (see its log)",
        )
        self.assertNotIn(b"certificate", result.stderr)

    def test_cutLater(self) -> None:
        """
        An mtlsd server that cuts the connection more than a second after
        the handshake (here: the client's certificate revoked, the CRL
        reloaded) is said to have closed without an alert, and the
        certificate is not blamed.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--reload-interval", "0.2")
        process = subprocess.Popen(
            [MTLSD, "connect", f"localhost:{daemon.port}"],
            cwd=directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
        )
        self.addCleanup(process.kill)
        daemon.waitForLog(r"\] accepted 127\.0\.0\.1:\d+: CN=client ")
        time.sleep(1.2)
        self.assertEqual(mtlsd("pki", "revoke", "client", cwd=directory).returncode, 0)
        daemon.waitForLog(r"\] cut 127\.0\.0\.1:\d+: CN=client .*: revoked")
        stdout, stderr = process.communicate(timeout=DEADLINE)
        self.assertEqual((process.returncode, stdout), (1, b""))
        self.assertOneLine(
            stderr,
            f"mtlsd connect: localhost:{daemon.port}: ",
            "the server closed the connection without an alert (see its log)",
        )
        self.assertNotIn(b"certificate", stderr)


class PKITests(DaemonTestMixin, SynchronousTestCase):
    """
    C{mtlsd pki} refuses names that are not names, and counts right.
    """

    def test_issueRefusesBadNames(self) -> None:
        """
        C{mtlsd pki issue --uri 'not a uri'} (and a DNS name that is not
        one) exits 1 with one line naming the option and the value, and
        writes nothing.
        """
        directory = self.workDirectory()
        self.assertEqual(mtlsd("pki", "init", cwd=directory).returncode, 0)
        for option, value, needle in [
            ("--uri", "not a uri", "is not a URI: it needs a scheme"),
            ("--dns", "not a name", "is not a DNS name"),
        ]:
            result = mtlsd("pki", "issue", "alice", option, value, cwd=directory)
            self.assertEqual((result.returncode, result.stdout), (1, b""))
            self.assertOneLine(result.stderr, f"mtlsd pki: {option} '{value}' {needle}")
        self.assertFalse(os.path.exists(os.path.join(directory, "mtlsd-pki", "alice.crt")))

    def test_revokeCountsInSingular(self) -> None:
        """
        C{mtlsd pki revoke} of the first certificate says it lists C{1
        certificate}.
        """
        directory = self.workDirectory()
        self.assertEqual(mtlsd("pki", "init", cwd=directory).returncode, 0)
        self.assertEqual(mtlsd("pki", "issue", "alice", cwd=directory).returncode, 0)
        result = mtlsd("pki", "revoke", "alice", cwd=directory)
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (0, b"revoked alice; mtlsd-pki/crl.pem lists 1 certificate\n", b""),
        )


class InspectTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{mtlsd inspect} reads the CRLs and PKCS#12 files the daemon accepts.
    """

    def test_crlAndPKCS12(self) -> None:
        """
        After C{mtlsd pki revoke alice}, C{mtlsd inspect mtlsd-pki/crl.pem}
        names the CA and lists alice's serial as C{inspect} shows it on her
        certificate; a PKCS#12 file made by C{openssl pkcs12 -export} is
        described with C{--passphrase-file}, its key not shown; a file that
        is none of these gets one line and exit 1.
        """
        self.requireOpenSSL()
        directory = self.workDirectory()
        for args in (("pki", "init"), ("pki", "issue", "alice"), ("pki", "revoke", "alice")):
            self.assertEqual(mtlsd(*args, cwd=directory).returncode, 0, args)
        alice = mtlsd("inspect", "mtlsd-pki/alice.crt", cwd=directory)
        serial = re.search(r"serial: +([0-9a-f]+)\n", alice.stdout.decode())
        assert serial is not None

        result = mtlsd("inspect", "mtlsd-pki/crl.pem", cwd=directory)
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        text = result.stdout.decode()
        self.assertTrue(text.startswith("mtlsd-pki/crl.pem CRL [1/1]\n"), text)
        self.assertRegex(text, r"\n  issuer: +CN=mtlsd development CA\n")
        self.assertRegex(text, r"\n  nextUpdate: +\d{4}-\d\d-\d\d .* UTC \(\d+ days left\)\n")
        self.assertRegex(
            text, r"\n  revoked: +1 certificate\n    serial " + serial.group(1) + " on "
        )

        with open(os.path.join(directory, "pass"), "w") as f:
            f.write("s3cret\n")
        openssl(
            *("pkcs12", "-export", "-in", "mtlsd-pki/alice.crt", "-inkey", "mtlsd-pki/alice.key"),
            *("-certfile", "mtlsd-pki/ca.crt", "-passout", "file:pass", "-out", "alice.p12"),
            cwd=directory,
        )
        result = mtlsd("inspect", "--passphrase-file", "pass", "alice.p12", cwd=directory)
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        text = result.stdout.decode()
        self.assertIn("alice.p12: PKCS#12 with a private key (not shown)", text)
        self.assertRegex(text, r"alice\.p12 \[1/2\]\n  subject: +CN=alice\n")
        self.assertRegex(text, r"alice\.p12 \[2/2\]\n  subject: +CN=mtlsd development CA\n")
        self.assertNotIn("PRIVATE", text)

        result = mtlsd("inspect", "pass", cwd=directory)
        self.assertEqual((result.returncode, result.stdout), (1, b""))
        self.assertOneLine(result.stderr, "mtlsd inspect: pass holds no certificate or CRL")
