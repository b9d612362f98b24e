"""
Black-box tests of start-up failures as a user meets them: a real C{twistd
mtlsd}, daemonized or not, ends at once with one line on standard error.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from tests._process import REPOSITORY, TWISTD, run
from tests.test_daemon import DaemonTestMixin


def takenPort(case: SynchronousTestCase) -> int:
    """
    A port some other program listens on.
    """
    sock = socket.socket(socket.AF_INET6)
    sock.bind(("::", 0))
    sock.listen()
    case.addCleanup(sock.close)
    return int(sock.getsockname()[1])


class StartupFailureTests(DaemonTestMixin, SynchronousTestCase):
    def assertFailsWithOneLine(self, directory: str, args: list[str], line: str) -> None:
        started = time.monotonic()
        result = run([TWISTD, *args], directory, timeout=10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, b"")
        self.assertOneLine(result.stderr, "mtlsd: ", line)

    def test_daemonizedPortTaken(self) -> None:
        """
        Without C{-n}, a port in use (the TLS port, or the metrics port) ends
        the twistd command at once, non-zero, with the reason on standard
        error, and leaves no pid file.
        """
        directory = self.workDirectory()
        port = takenPort(self)
        self.assertFailsWithOneLine(
            directory,
            ["--pidfile", "twistd.pid", "mtlsd", "--port", str(port)],
            f"cannot listen on --port {port}: ",
        )
        self.assertFailsWithOneLine(
            directory,
            ["--pidfile", "twistd.pid", "mtlsd", "--port", "0", "--metrics", f"tcp:{port}"],
            f"cannot listen on --metrics tcp:{port}: ",
        )
        self.assertFailsWithOneLine(
            directory,
            ["--pidfile", "twistd.pid", "mtlsd", "--listen", "tcp:0:interface=192.0.2.1"],
            "Cannot assign requested address",
        )
        self.assertFalse(os.path.exists(os.path.join(directory, "twistd.pid")))

    def test_optionErrors(self) -> None:
        """
        Config-file problems and option conflicts are one line, C{mtlsd:
        ...}, on standard error: not the whole usage on standard output.
        """
        directory = self.workDirectory()
        with open(os.path.join(directory, "bad.toml"), "w") as f:
            f.write("porrt = 8443\n")
        for args, line in [
            (["--config", "missing.toml"], "missing.toml"),
            (["--config", "bad.toml"], "porrt"),
            (["--cert", "server.crt"], "--cert needs --client-certs"),
            (["--listen", "tcp:8443", "--port", "8443"], "--listen and --port cannot be used"),
            (
                ["--forward", "127.0.0.1:8090"],
                "--forward 127.0.0.1:8090 is not an endpoint description; did you mean"
                " tcp:127.0.0.1:8090?",
            ),
            (["--forward", "tcp:10.1.2.3:80"], "give --unsafe-backend"),
            (["--bogus"], "option --bogus not recognized"),
        ]:
            self.assertFailsWithOneLine(directory, ["-n", "mtlsd", *args], line)

    def test_appNotOnModulePath(self) -> None:
        """
        C{--app whoami_web.site} run from the example's own folder says that
        the module is not on the module path and how to put it there.
        """
        examples = os.path.join(REPOSITORY, "docs", "examples")
        pki = os.path.join(self.workDirectory(), "pki")
        self.assertFailsWithOneLine(
            examples,
            ["-n", "--pidfile=", "mtlsd", "--pki", pki, "--app", "whoami_web.site"],
            "no module named whoami_web on the module path; twistd does not look in the"
            " current folder: run it as PYTHONPATH=. twistd",
        )
