"""
Black-box tests of the HTTP forwarding mode (C{twistd mtlsd --forward-http}):
real clients (curl, Python's requests and ssl), real backends (a twisted.web
site echoing what it received, C{python -m http.server}, a backend that
stalls), each identity header checked against the DER of the client's
certificate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import requests
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._process import DEADLINE, REPOSITORY, receiveExactly
from .test_forward import ForwardTestMixin, clientContext, derCertificate

CURL = shutil.which("curl")
MiB = 1 << 20
GiB = 1 << 30


def sequence(der: bytes) -> str:
    return ":" + base64.b64encode(der).decode() + ":"


class HTTPModeMixin(ForwardTestMixin):
    def webBackend(self, directory: str, mode: str) -> int:
        """
        Start C{python -m tests.webbackend MODE}.

        @return: its port.
        """
        portFile = os.path.join(directory, f"web-{mode}.port")
        process = self.background(
            [sys.executable, "-m", "tests.webbackend", mode, portFile],
            REPOSITORY,
            f"web-{mode}",
            logDirectory=directory,
        )
        return int(process.waitForFile(portFile))

    def httpDaemon(self, directory: str, backend: int, *args: str) -> Any:
        return self.startDaemon(directory, "--forward-http", f"tcp:127.0.0.1:{backend}", *args)

    def pki(self, directory: str, name: str) -> str:
        return os.path.join(directory, "mtlsd-pki", name)

    def curl(self, directory: str, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        if CURL is None:
            raise SkipTest("curl is not installed")
        return subprocess.run(
            [CURL, "-sS", "--cacert", self.pki(directory, "ca.crt"), *args, url],
            capture_output=True,
            timeout=DEADLINE,
        )

    def clientCurl(self, directory: str, url: str, *args: str) -> Any:
        key = (
            "--cert",
            self.pki(directory, "client.crt"),
            "--key",
            self.pki(directory, "client.key"),
        )
        result = self.curl(directory, url, *key, *args)
        self.assertEqual(result.returncode, 0, result.stderr)  # type: ignore[attr-defined]
        return result.stdout

    def session(self, directory: str) -> requests.Session:
        session = requests.Session()
        session.cert = (self.pki(directory, "client.crt"), self.pki(directory, "client.key"))
        session.verify = self.pki(directory, "ca.crt")
        session.trust_env = False  # REQUESTS_CA_BUNDLE would replace verify
        self.addCleanup(session.close)  # type: ignore[attr-defined]
        return session


def headers(answer: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in answer["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


class IdentityHeaderTests(HTTPModeMixin, SynchronousTestCase):
    def test_curl(self) -> None:
        """
        curl with the client certificate: the backend gets C{Client-Cert}
        equal to the certificate's DER, byte for byte; C{Client-Cert-Chain}
        equal to what curl sent after it (OpenSSL's client sends the CA it
        chained to); the forwarding headers; and none of the identity
        headers curl itself sent, which the daemon logs once.
        """
        directory = self.pkiDirectory()
        daemon = self.httpDaemon(directory, self.webBackend(directory, "echo"))
        forged = [
            "Client-Cert: :Zm9yZ2Vk:",
            "client-cert-chain: :Zm9yZ2Vk:",
            "X-Forwarded-For: 10.9.9.9",
            "Forwarded: for=10.9.9.9",
            "X-Forwarded-Client-Cert: Hash=00",
        ]
        args = [item for header in forged for item in ("-H", header)]
        url = f"https://localhost:{daemon.port}/some/path?q=1"
        answer = json.loads(self.clientCurl(directory, url, *args))
        received = headers(answer)
        client = derCertificate(self.pki(directory, "client.crt"))
        ca = derCertificate(self.pki(directory, "ca.crt"))
        self.assertEqual(received["client-cert"], [sequence(client)])
        self.assertEqual(received["client-cert-chain"], [sequence(ca)])
        self.assertEqual(received["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(received["x-forwarded-proto"], ["https"])
        self.assertEqual(received["forwarded"], ["for=127.0.0.1;proto=https"])
        self.assertNotIn("x-forwarded-client-cert", received)
        self.assertEqual(answer["uri"], "/some/path?q=1")
        [line] = daemon.waitForLog(r"removed identity headers sent by 127\.0\.0\.1:\d+")
        self.assertIn(
            "(CN=client): client-cert, client-cert-chain, forwarded, x-forwarded-client-cert,"
            " x-forwarded-for",
            line,
        )
        daemon.waitForLog(r"127\.0\.0\.1:\d+ CN=client: GET /some/path 200$")
        # The start-up line's command works as given.
        [hint] = daemon.waitForLog(r"try: curl .* \(forwarded to tcp:127\.0\.0\.1:\d+\)$")
        command = hint.partition("try: ")[2].partition(" (forwarded")[0].split()
        if CURL is None:
            raise SkipTest("curl is not installed")
        result = subprocess.run(command, cwd=directory, capture_output=True, timeout=DEADLINE)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(sequence(client).encode(), result.stdout)

    def test_requestsKeepAliveAndChosenHeaders(self) -> None:
        """
        Python's requests, twenty requests on one kept-alive connection:
        each carries the certificate; C{--client-cert-header xfcc} adds
        Envoy's header (its hash the certificate's SHA-256) and
        C{--identity-header} the CN.
        """
        directory = self.pkiDirectory()
        backend = self.webBackend(directory, "echo")
        daemon = self.httpDaemon(
            directory,
            backend,
            "--client-cert-header",
            "xfcc",
            "--identity-header",
            "X-Client-CN=cn",
        )
        session = self.session(directory)
        client = derCertificate(self.pki(directory, "client.crt"))
        for i in range(20):
            response = session.get(f"https://localhost:{daemon.port}/{i}")
            self.assertEqual(response.status_code, 200)
            received = headers(response.json())
            self.assertEqual(received["client-cert"], [sequence(client)])
            self.assertEqual(received["x-client-cn"], ["client"])
            [xfcc] = received["x-forwarded-client-cert"]
            self.assertTrue(xfcc.startswith(f"Hash={hashlib.sha256(client).hexdigest()};"), xfcc)
            self.assertIn('Subject="CN=client"', xfcc)
        self.assertEqual(len(daemon.accepted()), 1)

    def test_resumedSession(self) -> None:
        """
        A client that resumes its TLS session (it sends no certificate)
        still gets its certificate and chain forwarded.
        """
        directory = self.pkiDirectory()
        daemon = self.httpDaemon(directory, self.webBackend(directory, "echo"))
        context = clientContext(os.path.join(directory, "mtlsd-pki"), "client")
        answers, session = [], None
        for _ in range(2):
            raw = socket.create_connection(("127.0.0.1", daemon.port), timeout=DEADLINE)
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                answers.append(json.loads(data.partition(b"\r\n\r\n")[2]))
                reused = sock.session_reused
                session = sock.session
        self.assertTrue(reused)
        self.assertEqual(headers(answers[1])["client-cert"], headers(answers[0])["client-cert"])
        self.assertEqual(
            headers(answers[1])["client-cert-chain"], headers(answers[0])["client-cert-chain"]
        )
        daemon.waitForLog(r"accepted .*", count=2)

    def test_forgedSpellings(self) -> None:
        """
        Forged identity headers in other spellings (case, duplicates, C{_}
        for C{-}, an obsolete line fold) sent over a raw TLS socket: the
        backend gets mtlsd's one C{Client-Cert} and C{X-Forwarded-For}.
        """
        directory = self.pkiDirectory()
        daemon = self.httpDaemon(directory, self.webBackend(directory, "echo"))
        context = clientContext(os.path.join(directory, "mtlsd-pki"), "client")
        raw = socket.create_connection(("127.0.0.1", daemon.port), timeout=DEADLINE)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nCLIENT-CERT: :Zm9yZ2Vk:\r\nclient-cert: :Zm9yZ2Vk:\r\n"
                b"Client_Cert: :Zm9yZ2Vk:\r\nX_Forwarded_For: 10.0.0.1\r\n"
                b"X-Other: a\r\n Client-Cert: :Zm9yZ2Vk:\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        received = headers(json.loads(data.partition(b"\r\n\r\n")[2]))
        client = derCertificate(self.pki(directory, "client.crt"))
        self.assertEqual(received["client-cert"], [sequence(client)])
        self.assertEqual(received["x-forwarded-for"], ["127.0.0.1"])
        self.assertNotIn("client_cert", received)
        self.assertNotIn("x_forwarded_for", received)
        self.assertEqual(received["x-other"], ["a Client-Cert: :Zm9yZ2Vk:"])


class SemanticsTests(HTTPModeMixin, SynchronousTestCase):
    def test_plainHTTPToTLSPort(self) -> None:
        """
        curl speaking plain HTTP to the TLS port is answered 400 with a
        sentence saying it is an HTTPS port requiring a client certificate;
        the daemon logs the rejection C{not TLS}.
        """
        directory = self.pkiDirectory()
        daemon = self.httpDaemon(directory, self.webBackend(directory, "echo"))
        result = self.curl(directory, f"http://localhost:{daemon.port}/", "-i")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith(b"HTTP/1.1 400 Bad Request\r\n"), result.stdout)
        self.assertIn(b"This is an HTTPS port, and it requires a client certificate", result.stdout)
        self.assertEqual(daemon.waitForRejections(1), ["not TLS"])

    def test_httpServerBackend(self) -> None:
        """
        C{python -m http.server} behind the mode: a file comes back intact
        (GET), and HEAD gives its length without a body.
        """
        directory = self.pkiDirectory()
        served = os.path.join(directory, "www")
        os.makedirs(served)
        content = os.urandom(300_000)
        with open(os.path.join(served, "blob.bin"), "wb") as f:
            f.write(content)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = self.background(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            served,
            "http-server",
            logDirectory=directory,
        )
        server.waitForTCPListener(port)
        daemon = self.httpDaemon(directory, port)
        session = self.session(directory)
        url = f"https://localhost:{daemon.port}/blob.bin"
        self.assertEqual(session.get(url).content, content)
        head = session.head(url)
        self.assertEqual((head.status_code, head.content), (200, b""))
        self.assertEqual(head.headers["content-length"], str(len(content)))

    def test_uploadToStalledBackendBoundsMemory(self) -> None:
        """
        A 1 GiB upload towards a backend that reads nothing: the client's
        writes stall well short of it and the daemon's peak RSS grows by
        less than 32 MiB; once the backend reads, all of it arrives.
        """
        from .test_exhaustion import status

        directory = self.pkiDirectory()
        daemon = self.httpDaemon(directory, self.webBackend(directory, "stall"))
        context = clientContext(os.path.join(directory, "mtlsd-pki"), "client")
        raw = socket.create_connection(("127.0.0.1", daemon.port), timeout=60)
        sock = context.wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        pid = daemon.process.pid
        rssBefore = status(pid, "VmRSS")
        sent = [0]
        chunk = os.urandom(MiB)

        def send() -> None:
            sock.sendall(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GiB)
            for _ in range(GiB // MiB):
                sock.sendall(chunk)
                sent[0] += len(chunk)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        last, still, end = -1, time.monotonic(), time.monotonic() + 3 * DEADLINE
        while time.monotonic() < end and sent[0] < GiB:
            if sent[0] != last:
                last, still = sent[0], time.monotonic()
            elif time.monotonic() - still > 1.0:
                break
            time.sleep(0.05)
        stalledAt = sent[0]
        grown = status(pid, "VmHWM") - rssBefore
        self.assertLess(stalledAt, 64 * MiB)
        self.assertLess(grown, 32 * 1024)  # KiB
        open(os.path.join(directory, "web-stall.port.go"), "w").close()
        sender.join(120)
        self.assertFalse(sender.is_alive())
        expected = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n%d" % GiB
        answer = receiveExactly(sock, len(expected), 60)
        self.assertEqual(answer, expected)
        print(
            f"\n1 GiB upload: the client stalled after {stalledAt // MiB} MiB;"
            f" the daemon's peak RSS grew {grown // 1024} MiB"
        )

    def test_backendDown(self) -> None:
        """
        A backend that refuses connections: 502 with a short body, and the
        C{backend unavailable} line.
        """
        directory = self.pkiDirectory()
        closed = socket.socket()
        self.addCleanup(closed.close)
        closed.bind(("127.0.0.1", 0))
        daemon = self.httpDaemon(directory, closed.getsockname()[1])
        response = self.session(directory).get(f"https://localhost:{daemon.port}/")
        self.assertEqual(response.status_code, 502)
        self.assertEqual(response.text, "Bad gateway: the backend is unavailable.\n")
        daemon.waitForLog(r"backend unavailable: .*refused.* \(client 127\.0\.0\.1:\d+\)")

    def test_http2ClientGetsHTTP11(self) -> None:
        """
        A client that prefers HTTP/2 (curl --http2) is served HTTP/1.1: the
        mode offers only C{http/1.1} by ALPN.
        """
        directory = self.pkiDirectory()
        daemon = self.httpDaemon(directory, self.webBackend(directory, "echo"))
        out = self.clientCurl(
            directory, f"https://localhost:{daemon.port}/", "--http2", "-o", "/dev/null",
            "-w", "%{http_version} %{http_code}",
        )  # fmt: skip
        self.assertEqual(out, b"1.1 200")

    def test_badOptions(self) -> None:
        """
        Contradicting or malformed options: one line on standard error.
        """
        directory = self.pkiDirectory()
        for args, words in [
            (["--forward-http", "tcp:127.0.0.1:1", "--forward", "tcp:127.0.0.1:2"], "cannot be used together"),
            (["--forward-http", "tcp:192.0.2.1:80"], "not on loopback"),
            (["--forward-http", "tcp:127.0.0.1:1", "--identity-header", "Host=cn"], "sets or needs the Host header"),
        ]:  # fmt: skip
            daemon = self.daemonProcess(directory, args)
            self.assertNotEqual(daemon.returncode, 0)
            text = daemon.stderr.decode() + daemon.stdout.decode()
            self.assertNotIn("Traceback", text)
            self.assertIn(words, text)

    def daemonProcess(self, directory: str, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        from ._process import TWISTD, environment

        return subprocess.run(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "mtlsd", "--port", "0", *args],
            cwd=directory,
            capture_output=True,
            timeout=DEADLINE,
            env=environment(),
        )


class MetricsTests(HTTPModeMixin, SynchronousTestCase):
    def test_requestsCounted(self) -> None:
        """
        C{mtlsd_http_requests_total} counts requests by response status.
        """
        from .test_production import get, sample

        directory = self.pkiDirectory()
        daemon = self.httpDaemon(
            directory, self.webBackend(directory, "echo"), "--metrics", "tcp:0:interface=127.0.0.1"
        )
        tlsPort = daemon.port
        metricsPort = daemon.waitForListening(pattern=r"Site starting on (\d+)")
        session = self.session(directory)
        for _ in range(3):
            self.assertEqual(session.get(f"https://localhost:{tlsPort}/").status_code, 200)
        daemon.waitForLog(r"CN=client: GET / 200$", count=3)
        _, metrics = get(metricsPort, "/metrics")
        self.assertEqual(sample(metrics, "mtlsd_http_requests_total", code="200"), 3.0)
        self.assertTrue(re.search(r"mtlsd_http_forged_headers_total 0", metrics), metrics)
