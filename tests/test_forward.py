"""
Black-box tests of what mtlsd carries: C{--forward} to a real plaintext
backend process (intact, half-closed, PROXY protocol headers), C{haproxy:}
listeners, C{mtlsd tunnel}, the C{mtls:} endpoint string in C{twistd web},
C{--app}, and two daemons behind a real HAProxy.  Every key and certificate
is made at test time; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import re
import shutil
import socket
import ssl
import sys
import threading
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from proxyprotocol.v1 import ProxyProtocolV1
from proxyprotocol.v2 import ProxyProtocolV2
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._process import (
    DEADLINE,
    LISTENING_ANY,
    MTLSD,
    REPOSITORY,
    TWISTD,
    Background,
    Daemon,
    exchange,
    mtlsd,
    pkiClient,
    receiveExactly,
    repositoryOnPythonPath,
    run,
)
from .test_daemon import DaemonTestMixin

MiB = 1 << 20
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28


def payloadFile(directory: str, size: int, seed: int) -> tuple[str, str]:
    """
    Write C{size} pseudo-random bytes to a file.

    @return: its path and the bytes' SHA-256.
    """
    data = random.Random(seed).randbytes(size)
    path = os.path.join(directory, f"payload-{size}.bin")
    with open(path, "wb") as f:
        f.write(data)
    return path, hashlib.sha256(data).hexdigest()


def clientContext(pki: str, name: str) -> ssl.SSLContext:
    """
    Python's default client context trusting the PKI's CA and presenting
    C{name}'s certificate (as L{tlsClient} makes it).
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=os.path.join(pki, "ca.crt")
    )
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    context.load_cert_chain(os.path.join(pki, f"{name}.crt"), os.path.join(pki, f"{name}.key"))
    return context


def derCertificate(path: str) -> bytes:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).public_bytes(Encoding.DER)


def freePort() -> int:
    """
    A port nothing listens on now, for a program that cannot be started on
    port 0 and say which port it got (HAProxy).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HeaderEchoBackend:
    """
    A plaintext backend in a thread of the test process, like C{python -m
    tests.backend proxy}: it answers each connection with 4 bytes of length
    and the PROXY header (version 1 or 2) it received, then echoes.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    @staticmethod
    def _read(connection: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = connection.recv(size - len(data))
            if not chunk:
                raise EOFError(data)
            data += chunk
        return data

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(DEADLINE)
            try:
                header = self._read(connection, 5)
                if header == b"PROXY":
                    while not header.endswith(b"\r\n") and len(header) < 107:
                        header += self._read(connection, 1)
                else:
                    header += self._read(connection, 11)
                    if header[:12] == V2_SIGNATURE:
                        header += self._read(connection, int.from_bytes(header[14:16], "big"))
                connection.sendall(len(header).to_bytes(4, "big") + header)
                while data := connection.recv(1 << 16):
                    connection.sendall(data)
            except (OSError, EOFError):
                return

    def stop(self) -> None:
        # shutdown() wakes the thread blocked in accept() on Linux.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(DEADLINE)


class ForwardTestMixin(DaemonTestMixin):
    """
    A directory with a development PKI; daemons, backends and other
    processes started in it and stopped after the test.
    """

    def pkiDirectory(self) -> str:
        directory = self.workDirectory()
        result = mtlsd("pki", "init", cwd=directory)
        self.assertEqual(result.returncode, 0, result.stderr)  # type: ignore[attr-defined]
        return directory

    def daemonWith(self, directory: str, *args: str, env: dict[str, str] | None = None) -> Daemon:
        """
        Start C{twistd -n mtlsd ARGS} (no C{--port} added) and wait until
        it logs the port it listens on, TCP or C{haproxy:}.
        """
        daemon = Daemon(directory, list(args), env=env)
        self.addCleanup(daemon.stop)  # type: ignore[attr-defined]
        daemon.waitForListening(pattern=LISTENING_ANY)
        return daemon

    def background(
        self, args: list[str], cwd: str, name: str, logDirectory: str | None = None
    ) -> Background:
        """
        Start a process; its output goes to C{NAME.log} in C{logDirectory}
        (default: C{cwd}).
        """
        logPath = os.path.join(logDirectory or cwd, f"{name}.log")
        process = Background(args, cwd, logPath)
        self.addCleanup(process.stop)  # type: ignore[attr-defined]
        return process

    def backend(self, directory: str, mode: str) -> int:
        """
        Start C{python -m tests.backend MODE} (the repository as its
        directory, so C{tests} imports).

        @return: its port.
        """
        portFile = os.path.join(directory, f"backend-{mode}.port")
        process = self.background(
            [sys.executable, "-m", "tests.backend", mode, portFile],
            REPOSITORY,
            f"backend-{mode}",
            logDirectory=directory,
        )
        return int(process.waitForFile(portFile))


class ForwardTests(ForwardTestMixin, SynchronousTestCase):
    """
    C{--forward} relays each authenticated connection to a plaintext backend
    process, both ways, with half-close carried end to end.
    """

    def test_echoBackendIntact(self) -> None:
        """
        8 MiB of random bytes through C{mtlsd connect < file}, the daemon
        and an echo backend come back with the same SHA-256; the daemon logs
        the client as accepted and, when it closes, 8 MiB in and 8 MiB out.
        """
        directory = self.pkiDirectory()
        backend = self.backend(directory, "echo")
        daemon = self.startDaemon(directory, "--forward", f"tcp:127.0.0.1:{backend}")
        path, digest = payloadFile(directory, 8 * MiB, 1)
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, stdinPath=path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(result.stdout), 8 * MiB)
        self.assertEqual(hashlib.sha256(result.stdout).hexdigest(), digest)
        daemon.waitForLog(rf"closed 127\.0\.0\.1:\d+: CN=client in={8 * MiB} out={8 * MiB} ")
        self.assertEqual([cn for _, cn, _, _ in daemon.accepted()], ["client"])

    def test_halfCloseEndToEnd(self) -> None:
        """
        With a backend that answers only after the end of its input (a
        byte count), C{mtlsd connect} prints the count and exits 0: the
        client's close_notify reached the backend as a half-close, and the
        answer still came back.  The daemon logs 8 MiB in and the answer's
        8 bytes out.
        """
        directory = self.pkiDirectory()
        backend = self.backend(directory, "wc")
        daemon = self.startDaemon(directory, "--forward", f"tcp:127.0.0.1:{backend}")
        path, _ = payloadFile(directory, 8 * MiB, 2)
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, stdinPath=path)
        self.assertEqual(
            (result.returncode, result.stdout), (0, b"%d\n" % (8 * MiB)), result.stderr
        )
        daemon.waitForLog(rf"closed 127\.0\.0\.1:\d+: CN=client in={8 * MiB} out=8 ")
        self.assertEqual([cn for _, cn, _, _ in daemon.accepted()], ["client"])


class StalledBackendTests(ForwardTestMixin, SynchronousTestCase):
    """
    Back-pressure end to end: a backend that stops reading stops the
    daemon reading from the client, so its memory stays bounded.
    """

    def test_stalledBackendBoundsMemory(self) -> None:
        """
        A client sends 64 MiB towards a backend that reads nothing: the
        client's writes stall well short of 64 MiB (the daemon stopped
        reading instead of buffering) and the daemon's peak RSS grows by
        less than 32 MiB.  Once the backend reads, all 64 MiB arrive.
        """
        from .test_exhaustion import status

        directory = self.pkiDirectory()
        backend = self.backend(directory, "stall")
        daemon = self.startDaemon(directory, "--forward", f"tcp:127.0.0.1:{backend}")
        pid = daemon.process.pid
        sock = pkiClient(daemon.port, os.path.join(directory, "mtlsd-pki"))
        self.addCleanup(sock.close)
        rssBefore = status(pid, "VmRSS")
        sent = [0]
        chunk = os.urandom(MiB)

        def send() -> None:
            for _ in range(64):
                sock.sendall(chunk)
                sent[0] += len(chunk)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # Until the client's writes have stopped moving for a second.
        last, still, end = -1, time.monotonic(), time.monotonic() + 3 * DEADLINE
        while time.monotonic() < end and sent[0] < 64 * MiB:
            if sent[0] != last:
                last, still = sent[0], time.monotonic()
            elif time.monotonic() - still > 1.0:
                break
            time.sleep(0.05)
        stalledAt = sent[0]
        grown = status(pid, "VmHWM") - rssBefore
        self.assertLess(stalledAt, 48 * MiB)
        self.assertLess(grown, 32 * 1024)  # KiB
        open(os.path.join(directory, "backend-stall.port.go"), "w").close()
        sender.join(3 * DEADLINE)
        self.assertFalse(sender.is_alive())
        self.assertEqual(receiveExactly(sock, 9, 3 * DEADLINE), b"%d\n" % (64 * MiB))
        print(
            f"\nstalled backend: the client stalled after {stalledAt // MiB} MiB of 64;"
            f" the daemon's peak RSS grew {grown // 1024} MiB"
        )


class BackendDownTests(ForwardTestMixin, SynchronousTestCase):
    """
    A backend that refuses connections, and one off loopback.
    """

    def test_backendRefuses(self) -> None:
        """
        When nothing listens on the backend's port, the client is let go at
        once (C{mtlsd connect} exits well within the 30 s handshake timeout,
        with no output) and the daemon logs C{backend unavailable} with the
        client's address.
        """
        directory = self.pkiDirectory()
        # Bound but not listening: connecting is refused, and no other
        # process can take the port while the test holds it.
        closed = socket.socket()
        self.addCleanup(closed.close)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        daemon = self.startDaemon(
            directory, "--forward", f"tcp:127.0.0.1:{port}", "--handshake-timeout", "30"
        )
        started = time.monotonic()
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hello\n")
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 5.0)
        self.assertEqual(result.stdout, b"")
        self.assertNotIn(b"Traceback", result.stderr)
        daemon.waitForLog(r"backend unavailable: .*refused.* \(client 127\.0\.0\.1:\d+\)$")
        self.assertEqual([cn for _, cn, _, _ in daemon.accepted()], ["client"])

    def test_remoteBackendNeedsUnsafeFlag(self) -> None:
        """
        C{--forward tcp:10.1.2.3:80} (plaintext off this host) stops
        C{twistd} with a non-zero status and a line naming the backend and
        C{--unsafe-backend}, without a traceback; with C{--unsafe-backend}
        the daemon starts (nothing connects to the backend).
        """
        directory = self.pkiDirectory()
        result = run(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "mtlsd", "--port", "0"]
            + ["--forward", "tcp:10.1.2.3:80"],
            directory,
        )
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [
            line
            for line in output.splitlines()
            if "tcp:10.1.2.3:80" in line and "--unsafe-backend" in line
        ]
        self.assertEqual(len(lines), 1, output)
        self.assertNotIn("starting on", output)

        self.startDaemon(directory, "--forward", "tcp:10.1.2.3:80", "--unsafe-backend")


class ProxyProtocolTests(ForwardTestMixin, SynchronousTestCase):
    """
    C{--proxy-protocol} starts each backend connection with a PROXY header
    giving the client's address and, in version 2, its TLS identity; an
    independent parser (the C{proxy-protocol} package) reads it.
    """

    def exchangeHeader(self, version: str) -> tuple[bytes, tuple[str, int], ssl.SSLSocket, Daemon]:
        """
        Connect with Python's ssl client through a daemon forwarding with
        C{--proxy-protocol VERSION} to L{HeaderEchoBackend}.

        @return: the header, the client socket's own address, the socket
            and the daemon.
        """
        directory = self.pkiDirectory()
        self.pki = os.path.join(directory, "mtlsd-pki")
        backend = HeaderEchoBackend()
        self.addCleanup(backend.stop)
        daemon = self.startDaemon(
            directory,
            *("--forward", f"tcp:127.0.0.1:{backend.port}", "--proxy-protocol", version),
        )
        sock = pkiClient(daemon.port, self.pki)
        self.addCleanup(sock.close)
        local = sock.getsockname()
        length = int.from_bytes(receiveExactly(sock, 4), "big")
        header = receiveExactly(sock, length)
        # After the header, the backend echoes: the relay goes on as usual.
        sock.sendall(b"ping")
        self.assertEqual(receiveExactly(sock, 4), b"ping")
        return header, (local[0], local[1]), sock, daemon

    def assertAddresses(self, result: Any, client: tuple[str, int], daemon: Daemon) -> None:
        """
        The header's source is the client socket's own address, its
        destination the daemon's.
        """
        loopback = ipaddress.IPv4Address("127.0.0.1")
        self.assertEqual(client[0], "127.0.0.1")
        self.assertEqual(result.source, (loopback, client[1]))
        self.assertEqual(result.dest, (loopback, daemon.port))

    def test_v1(self) -> None:
        """
        C{--proxy-protocol v1}: a C{PROXY TCP4} line whose source is the
        client socket's own address and port, whose destination is the
        daemon's.
        """
        header, client, _, daemon = self.exchangeHeader("v1")
        self.assertTrue(header.startswith(b"PROXY TCP4 "), header)
        self.assertTrue(header.endswith(b"\r\n"), header)
        self.assertAddresses(ProxyProtocolV1().unpack(header), client, daemon)

    def assertV2(self, version: str) -> Any:
        """
        Check the addresses and the SSL TLV of a version 2 header.

        @return: the SSL TLV.
        """
        header, client, sock, daemon = self.exchangeHeader(version)
        self.assertTrue(header.startswith(V2_SIGNATURE), header)
        result = ProxyProtocolV2().unpack(header)
        self.assertAddresses(result, client, daemon)
        tls = result.tlv.ssl
        self.assertTrue(tls.has_ssl and tls.has_cert_conn and tls.verified)
        self.assertEqual(tls.cn, "client")
        self.assertEqual(tls.version, sock.version())
        cipher = sock.cipher()
        assert cipher is not None
        self.assertEqual(tls.cipher, cipher[0])
        return tls

    def test_v2(self) -> None:
        """
        C{--proxy-protocol v2}: a binary header with the client socket's
        address, and an SSL TLV saying a verified client certificate was
        presented, with CN C{client}, the TLS version and cipher the client
        negotiated, and no certificate.
        """
        tls = self.assertV2("v2")
        self.assertIsNone(tls.get(PP2_SUBTYPE_SSL_CLIENT_CERT))

    def test_v2Full(self) -> None:
        """
        C{--proxy-protocol v2-full}: as v2, plus the client's certificate,
        DER, in the C{PP2_SUBTYPE_SSL_CLIENT_CERT} sub-TLV.
        """
        tls = self.assertV2("v2-full")
        self.assertEqual(
            tls.get(PP2_SUBTYPE_SSL_CLIENT_CERT),
            derCertificate(os.path.join(self.pki, "client.crt")),
        )


class HAProxyListenerTests(ForwardTestMixin, SynchronousTestCase):
    """
    C{--listen haproxy:...}: mutual TLS behind a PROXY header.
    """

    def proxiedClient(self, directory: str, port: int) -> ssl.SSLSocket:
        """
        Send a PROXY v1 header on a new connection, then do the handshake on
        the same socket.
        """
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.addCleanup(raw.close)
        raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n")
        context = clientContext(os.path.join(directory, "mtlsd-pki"), "client")
        sock = context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def test_proxyHeaderThenTLS(self) -> None:
        """
        On a C{haproxy:tcp:0} listener, whose port the daemon logs (as
        C{(TLS) (PROXY) starting on PORT}), a client that sends a PROXY v1
        header and then does the handshake on the same socket gets its
        echo, and the daemon logs the connection.
        """
        directory = self.pkiDirectory()
        daemon = self.daemonWith(directory, "--listen", "haproxy:tcp:0:interface=127.0.0.1")
        self.assertRegex(daemon.log(), rf"\(TLS\) \(PROXY\) starting on {daemon.port}\b")
        sock = self.proxiedClient(directory, daemon.port)
        sock.sendall(b"hello")
        self.assertEqual(receiveExactly(sock, 5), b"hello")
        sock.close()
        daemon.waitForLog(r"closed \S+: CN=client in=5 out=5 ")
        self.assertEqual([cn for _, cn, _, _ in daemon.accepted()], ["client"])

    def test_proxiedAddressForwarded(self) -> None:
        """
        Behind a C{haproxy:} listener, the client mtlsd tells its backend
        about (C{--proxy-protocol v2}) is the one in the incoming PROXY
        header, with its verified CN.
        """
        directory = self.pkiDirectory()
        backend = HeaderEchoBackend()
        self.addCleanup(backend.stop)
        daemon = self.daemonWith(
            directory,
            *("--listen", "haproxy:tcp:0:interface=127.0.0.1"),
            *("--forward", f"tcp:127.0.0.1:{backend.port}", "--proxy-protocol", "v2"),
        )
        sock = self.proxiedClient(directory, daemon.port)
        header = receiveExactly(sock, int.from_bytes(receiveExactly(sock, 4), "big"))
        result = ProxyProtocolV2().unpack(header)
        self.assertEqual(result.source, (ipaddress.IPv4Address("203.0.113.7"), 40000))
        self.assertEqual(result.tlv.ssl.cn, "client")

    def test_logsProxiedAddress(self) -> None:
        """
        The daemon logs the address in the PROXY header as the client's,
        when accepted and when closed.
        """
        directory = self.pkiDirectory()
        daemon = self.daemonWith(directory, "--listen", "haproxy:tcp:0:interface=127.0.0.1")
        sock = self.proxiedClient(directory, daemon.port)
        sock.sendall(b"hello")
        self.assertEqual(receiveExactly(sock, 5), b"hello")
        sock.close()
        daemon.waitForLog(r"closed \S+: CN=client in=5 out=5 ")
        self.assertEqual(
            [(client, cn) for client, cn, _, _ in daemon.accepted()],
            [("203.0.113.7:40000", "client")],
        )
        daemon.waitForLog(r"closed 203\.0\.113\.7:40000: CN=client ", deadline=0)


class TunnelTests(ForwardTestMixin, SynchronousTestCase):
    """
    C{mtlsd tunnel} (plaintext in, mutual TLS out) in front of the daemon
    forwarding to a plaintext backend: plaintext end to end.
    """

    def chain(self, mode: str) -> tuple[int, Daemon]:
        """
        backend MODE <- daemon --forward <- mtlsd tunnel on the development
        PKI's defaults.

        @return: the tunnel's port, and the daemon.
        """
        directory = self.pkiDirectory()
        backend = self.backend(directory, mode)
        daemon = self.startDaemon(directory, "--forward", f"tcp:127.0.0.1:{backend}")
        tunnel = self.background(
            [MTLSD, "tunnel", "--listen", "tcp:0:interface=127.0.0.1"]
            + ["--to", f"localhost:{daemon.port}"],
            directory,
            "tunnel",
        )
        # The tunnel says where it listens, with the port tcp:0 got.
        found = tunnel.waitForLog(
            r"mtlsd tunnel: 127\.0\.0\.1:(\d+) -> " + re.escape(f"localhost:{daemon.port}")
        )
        return int(found.group(1)), daemon

    def test_echoIntactBothWays(self) -> None:
        """
        16 MiB of random bytes sent on a plain TCP socket to the tunnel,
        then a half-close, come back whole through the tunnel, the daemon
        and an echo backend, followed by end of file; the daemon counts
        16 MiB each way.
        """
        port, daemon = self.chain("echo")
        data = random.Random(3).randbytes(16 * MiB)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            received = exchange(sock, data)
        self.assertEqual(len(received), len(data))
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(data).digest())
        daemon.waitForLog(rf"closed 127\.0\.0\.1:\d+: CN=client in={16 * MiB} out={16 * MiB} ")

    def test_halfCloseThroughTunnel(self) -> None:
        """
        With a byte-counting backend, the plain client's half-close travels
        through the tunnel and the daemon to the backend, whose count comes
        back before end of file.
        """
        port, daemon = self.chain("wc")
        data = random.Random(4).randbytes(16 * MiB)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            received = exchange(sock, data)
        self.assertEqual(received, b"%d\n" % (16 * MiB))
        daemon.waitForLog(rf"closed 127\.0\.0\.1:\d+: CN=client in={16 * MiB} out=9 ")


class EndpointStringTests(ForwardTestMixin, SynchronousTestCase):
    """
    The C{mtls:} endpoint string in another twistd plugin.
    """

    def test_twistdWeb(self) -> None:
        """
        C{twistd web --listen mtls:0:...} serves files to C{curl} with the
        client certificate (200 and the file's content) and refuses C{curl}
        without one (non-zero exit, no content).
        """
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        directory = self.pkiDirectory()
        root = os.path.join(directory, "www")
        os.makedirs(root)
        content = b"<p>served over mutual TLS</p>\n"
        with open(os.path.join(root, "index.html"), "wb") as f:
            f.write(content)
        description = (
            "mtls:0:interface=127.0.0.1:certKey=mtlsd-pki/server.crt"
            ":privateKey=mtlsd-pki/server.key:clientCerts=mtlsd-pki/ca.crt"
        )
        web = self.background(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--listen", description]
            + ["--path", root],
            directory,
            "web",
        )
        port = int(web.waitForLog(r"\(TLS\) starting on (\d+)").group(1))
        common = [curl, "-sS", "--max-time", "10", "--resolve", f"localhost:{port}:127.0.0.1"]
        common += ["--cacert", "mtlsd-pki/ca.crt", "-w", "\n%{http_code}"]
        url = f"https://localhost:{port}/"

        result = run(
            [*common, "--cert", "mtlsd-pki/client.crt", "--key", "mtlsd-pki/client.key", url],
            directory,
        )
        self.assertEqual((result.returncode, result.stdout), (0, content + b"\n200"), result.stderr)

        result = run([*common, url], directory)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn(content, result.stdout)


class AppTests(ForwardTestMixin, SynchronousTestCase):
    """
    C{--app} loads an application by dotted name.
    """

    def test_appSeesPeerIdentity(self) -> None:
        """
        C{--app tests.apps.whoami}: the app reads the client's identity from
        its transport and C{mtlsd connect} prints C{client}.
        """
        directory = self.pkiDirectory()
        daemon = self.daemonWith(
            directory,
            *("--port", "0", "--app", "tests.apps.whoami"),
            env=repositoryOnPythonPath(),
        )
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory)
        self.assertEqual((result.returncode, result.stdout), (0, b"client\n"), result.stderr)
        daemon.waitForLog(r"closed 127\.0\.0\.1:\d+: CN=client in=0 out=7 ")


class HAProxyScaleOutTests(ForwardTestMixin, SynchronousTestCase):
    """
    Two daemons on C{haproxy:} listeners behind a real HAProxy (PROXY v2),
    sharing one bundle of trusted client certificates.
    """

    def setUp(self) -> None:
        self.haproxy = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
        )
        if self.haproxy is None:
            raise SkipTest("haproxy is not installed")
        self.directory = self.pkiDirectory()
        for name in ("alice", "bob"):
            result = mtlsd("pki", "issue", "--self-signed", name, cwd=self.directory)
            self.assertEqual(result.returncode, 0, result.stderr)
        self.pki = os.path.join(self.directory, "mtlsd-pki")
        self.bundle = os.path.join(self.directory, "clients.pem")
        self.writeBundle("alice", "bob")

    def writeBundle(self, *names: str) -> None:
        """
        Replace the bundle atomically with the certificates of C{names}.
        """
        data = b""
        for name in names:
            with open(os.path.join(self.pki, f"{name}.crt"), "rb") as f:
                data += f.read()
        with open(self.bundle + ".new", "wb") as f:
            f.write(data)
        os.replace(self.bundle + ".new", self.bundle)

    def startDaemons(self) -> list[Daemon]:
        daemons = []
        for name in ("a", "b"):
            directory = os.path.join(self.directory, name)
            os.makedirs(directory)
            daemons.append(
                self.daemonWith(
                    directory,
                    *("--listen", "haproxy:tcp:0:interface=127.0.0.1"),
                    *("--cert", os.path.join(self.pki, "server.crt")),
                    *("--key", os.path.join(self.pki, "server.key")),
                    *("--client-certs", self.bundle, "--reload-interval", "0.2"),
                )
            )
        return daemons

    def startHAProxy(self, daemons: list[Daemon]) -> int:
        """
        Start HAProxy in the foreground, balancing round-robin over
        C{daemons} with PROXY v2, and wait until it listens (without
        connecting: a probe would be relayed to a daemon).

        @return: its port.
        """
        port = freePort()
        config = os.path.join(self.directory, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(
                "global\n"
                "defaults\n"
                "    mode tcp\n"
                "    timeout connect 5s\n"
                "    timeout client 30s\n"
                "    timeout server 30s\n"
                "frontend f\n"
                f"    bind 127.0.0.1:{port}\n"
                "    default_backend b\n"
                "backend b\n"
                "    balance roundrobin\n"
                f"    server a 127.0.0.1:{daemons[0].port} send-proxy-v2\n"
                f"    server b 127.0.0.1:{daemons[1].port} send-proxy-v2\n"
            )
        assert self.haproxy is not None
        process = self.background([self.haproxy, "-f", config, "-db"], self.directory, "haproxy")
        process.waitForTCPListener(port)
        return port

    def connect(self, port: int, name: str) -> tuple[str, bool]:
        """
        Connect through HAProxy as C{name}, exchange a few bytes, close.

        @return: the client socket's own address as the daemons would log
            it, and whether the exchange worked (else the daemon refused
            the client: with TLS 1.3 the alert comes after the handshake).
        """
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        host, local = raw.getsockname()[:2]
        with raw:
            try:
                with clientContext(self.pki, name).wrap_socket(
                    raw, server_hostname="localhost"
                ) as sock:
                    sock.sendall(b"hi")
                    answer = receiveExactly(sock, 2)
            except (ssl.SSLError, ConnectionError, AssertionError):
                return f"{host}:{local}", False
        self.assertEqual(answer, b"hi")
        return f"{host}:{local}", True

    def connectAll(self, port: int, name: str, count: int) -> list[str]:
        """
        Make C{count} connections as C{name} that all get in.

        @return: the client sockets' own addresses.
        """
        addresses = []
        for _ in range(count):
            address, admitted = self.connect(port, name)
            self.assertTrue(admitted, f"{name} refused from {address}")
            addresses.append(address)
        return addresses

    def test_balancedAndReloadedTogether(self) -> None:
        """
        Four connections as alice through HAProxy are spread two and two
        over the daemons.  Bob gets in once; then the shared bundle is
        rewritten without him, both daemons reload, and his next two
        connections are refused, one by each daemon.
        """
        daemons = self.startDaemons()
        port = self.startHAProxy(daemons)

        self.connectAll(port, "alice", 4)
        for daemon in daemons:
            daemon.waitForLog(r"accepted \S+: CN=alice ", count=2)
        self.assertEqual([len(daemon.accepted()) for daemon in daemons], [2, 2])

        self.connectAll(port, "bob", 1)
        for daemon in daemons:
            daemon.waitForLog(r"accepted \S+: CN=(alice|bob) ", count=2)
        accepted = [cn for daemon in daemons for _, cn, _, _ in daemon.accepted()]
        self.assertEqual(sorted(accepted), ["alice"] * 4 + ["bob"])

        self.writeBundle("alice")
        for daemon in daemons:
            daemon.waitForLog(r"reloaded: 1 trusted certificate, ")

        for _ in range(2):
            address, admitted = self.connect(port, "bob")
            self.assertFalse(admitted, f"bob let in from {address}")
        for daemon in daemons:
            daemon.waitForLog(r"rejected \S+: ")
        self.assertEqual(
            [daemon.rejections() for daemon in daemons],
            [["self-signed certificate"], ["self-signed certificate"]],
        )
        self.assertEqual(
            sorted(cn for daemon in daemons for _, cn, _, _ in daemon.accepted()),
            ["alice"] * 4 + ["bob"],
        )

    def test_logsClientAddressBehindHAProxy(self) -> None:
        """
        Each daemon logs the client socket's own address (from HAProxy's
        PROXY v2 header) as the client's, not HAProxy's.
        """
        daemons = self.startDaemons()
        port = self.startHAProxy(daemons)
        alice = self.connectAll(port, "alice", 4)
        for daemon in daemons:
            daemon.waitForLog(r"accepted \S+: CN=alice ", count=2)
        logged = [client for daemon in daemons for client, _, _, _ in daemon.accepted()]
        self.assertEqual(sorted(logged), sorted(alice))
