"""
Black-box tests of what the daemon's log says of a client: a client of a
UNIX socket, and the JSON lines under C{twist}.
"""

from __future__ import annotations

import json
import os
import socket
import ssl

from twisted.trial.unittest import SynchronousTestCase

from tests._process import DEADLINE, Daemon, mtlsd, receiveExactly
from tests.test_daemon import DaemonTestMixin


class LogTests(DaemonTestMixin, SynchronousTestCase):
    def test_unixClient(self) -> None:
        """
        A client of a UNIX socket is logged as C{unix:PATH} with its process
        and user, not C{UNIXAddress(None)}.
        """
        directory = self.workDirectory()
        path = os.path.join(directory, "mtlsd.sock")
        daemon = Daemon(directory, ["--listen", f"unix:{path}"])
        self.addCleanup(daemon.stop)
        daemon.waitForLog(r"\(TLS\) starting on ")
        pki = os.path.join(directory, "mtlsd-pki")
        context = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        context.load_cert_chain(os.path.join(pki, "client.crt"), os.path.join(pki, "client.key"))
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(DEADLINE)
        raw.connect(path)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"hello")
            self.assertEqual(receiveExactly(tls, 5), b"hello")
        daemon.waitForLog(
            rf"accepted unix:{path} pid={os.getpid()} uid={os.getuid()}: CN=client sha256="
        )
        self.assertNotIn("UNIXAddress", daemon.log())
        self.assertNotIn("try:", daemon.log())  # mtlsd connect speaks TCP only

    def test_tryWithListen(self) -> None:
        """
        With C{--listen}, the command the daemon suggests names the port it
        listens on, not a placeholder.
        """
        directory = self.workDirectory()
        daemon = Daemon(directory, ["--listen", "tcp:0:interface=127.0.0.1"])
        self.addCleanup(daemon.stop)
        port = daemon.waitForListening()
        daemon.waitForLog(rf"try: echo hello \| mtlsd connect localhost:{port}$")
        self.assertNotIn("HOST:PORT", daemon.log())

    def test_twistJSON(self) -> None:
        """
        C{twist mtlsd --log-format json} writes mtlsd's JSON lines.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--log-format", "json", twist=True)
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hi\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        daemon.waitForLog(r'"event": "closed"')
        events = [json.loads(line) for line in daemon.log().splitlines()]
        [accepted] = [e for e in events if e["event"] == "accepted"]
        self.assertEqual(accepted["cn"], "client")
        self.assertTrue(all({"time", "level", "event", "message"} <= set(e) for e in events))
