"""
Black-box tests of socket activation: C{twistd mtlsd --listen
systemd:domain=INET:index=0} started the way systemd starts a service of a
C{.socket} unit (contrib/systemd/), with a listening socket made by the
test.  Everything listens on loopback (127.0.0.1, ::1).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._process import DEADLINE, MTLSD, POLL, TWISTD, Daemon, environment, mtlsd
from .test_daemon import DaemonTestMixin

SYSTEMD_LISTEN = "systemd:domain=INET:index=0"
# What systemd puts in LISTEN_FDNAMES for a socket unit without
# FileDescriptorName=: the unit's name.  Twisted ignores LISTEN_FDS unless
# LISTEN_FDNAMES names as many descriptors.
FD_NAME = "mtlsd.socket"

# Does what systemd does between fork and exec: the inherited socket becomes
# descriptor 3 and LISTEN_PID names this very process, which exec keeps.
# argv: the descriptor to hand over, the LISTEN_PID to set ("self": this
# process), then the command.
_ACTIVATE = """\
import os, sys
fd, pid = int(sys.argv[1]), sys.argv[2]
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid()) if pid == "self" else pid
os.execv(sys.argv[3], sys.argv[3:])
"""


def listeningSocket(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """
    @return: a new TCP socket listening on the loopback address of
        C{family} (IPv6: C{::1} only), on any free port.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.listen(16)
    return sock


def listeningInodes(pid: int) -> set[int]:
    """
    @return: the inodes of the TCP sockets in the LISTEN state that process
        C{pid} holds (Linux: C{/proc}).
    """
    held = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        if found:
            held.add(int(found.group(1)))
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    listening.add(int(fields[9]))
    return held & listening


def waitForQueued(port: int, deadline: float = DEADLINE) -> None:
    """
    Wait until a connection to 127.0.0.1:C{port} is established, which
    the kernel does for a listening socket even if no process accepts
    (Linux: C{/proc/net/tcp}).
    """
    local = f"0100007F:{port:04X}"
    end = time.monotonic() + deadline
    while True:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == local and fields[3] == "01":  # TCP_ESTABLISHED
                    return
        if time.monotonic() > end:
            raise AssertionError(f"no connection to port {port} within {deadline}s")
        time.sleep(POLL)


class ActivatedDaemon(Daemon):
    """
    C{twistd -n mtlsd ARGS} started like a socket-activated systemd service:
    C{listening} inherited as descriptor 3, C{LISTEN_FDS=1},
    C{LISTEN_FDNAMES} and C{LISTEN_PID} set.
    """

    def __init__(
        self,
        directory: str,
        listening: socket.socket,
        args: Sequence[str],
        listenPID: str = "self",
        logName: str = "daemon.log",
    ) -> None:
        """
        @param listenPID: the C{LISTEN_PID} to give, C{"self"} meaning the
            daemon's own process ID.
        @param logName: the name of its log file in C{directory}.
        """
        # Not Daemon.__init__: it starts a process that inherits no
        # descriptor beyond standard input and output.
        self.directory = directory
        self.port = 0
        self.logPath = os.path.join(directory, logName)
        command = [TWISTD, "-n", "--pidfile=", "--logfile=-", "mtlsd", *args]
        fd = listening.fileno()
        env = {**environment(), "LISTEN_FDS": "1", "LISTEN_FDNAMES": FD_NAME}
        env.pop("LISTEN_PID", None)
        self._logFile = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ACTIVATE, str(fd), listenPID, *command],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=self._logFile,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(fd,),
        )


class SocketActivationTests(DaemonTestMixin, SynchronousTestCase):
    """
    C{--listen systemd:...} serves on the listening socket it inherits, as
    from the C{mtlsd.socket} unit, and binds nothing itself.
    """

    _pki: str | None = None

    def setUp(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs Linux /proc to see which sockets the daemon holds")
        self.directory = self.workDirectory()
        pki = SocketActivationTests._pki
        if pki is None:
            result = mtlsd("pki", "init", cwd=self.directory)
            self.assertEqual(result.returncode, 0, result.stderr)
            # Reused by the next tests: making one takes a while.
            SocketActivationTests._pki = os.path.join(self.directory, "mtlsd-pki")
        else:
            shutil.copytree(pki, os.path.join(self.directory, "mtlsd-pki"))

    def inherit(self, family: socket.AddressFamily = socket.AF_INET) -> None:
        """
        Make the listening socket the daemons will inherit.
        """
        self.listening = listeningSocket(family)
        self.addCleanup(self.listening.close)
        self.port = self.listening.getsockname()[1]
        self.address = "[::1]" if family == socket.AF_INET6 else "127.0.0.1"
        self.inode = os.fstat(self.listening.fileno()).st_ino

    def activate(
        self,
        listen: str = SYSTEMD_LISTEN,
        listenPID: str = "self",
        logName: str = "daemon.log",
    ) -> ActivatedDaemon:
        daemon = ActivatedDaemon(
            self.directory, self.listening, ["--listen", listen], listenPID, logName
        )
        self.addCleanup(daemon.stop)
        return daemon

    def assertServesInheritedSocket(self, daemon: ActivatedDaemon) -> None:
        """
        Assert C{daemon} listens on the test's socket (its port, its very
        kernel socket) and on nothing else.
        """
        self.assertEqual(daemon.waitForListening(), self.port)
        self.assertEqual(len(re.findall(r"starting on \d+", daemon.log())), 1, daemon.log())
        self.assertEqual(listeningInodes(daemon.process.pid), {self.inode})

    def echo(self, payload: bytes) -> subprocess.CompletedProcess[bytes]:
        return mtlsd("connect", f"{self.address}:{self.port}", cwd=self.directory, input=payload)

    def test_inheritedSocket(self) -> None:
        """
        The daemon adopts descriptor 3 when C{LISTEN_PID} is its own
        process ID: it logs the test's port, holds the test's socket and
        no other listening one, and C{mtlsd connect} to that port gets the
        echo from a verified client, even once the test closed its own copy.
        """
        self.inherit()
        daemon = self.activate()
        self.assertServesInheritedSocket(daemon)
        self.assertNotIn("Traceback", daemon.log())

        result = self.echo(b"hello\n")
        self.assertEqual((result.returncode, result.stdout), (0, b"hello\n"), result.stderr)
        daemon.waitForLog(r"\[mtlsd#info\] accepted 127\.0\.0\.1:\d+: CN=client ")

        # Only the daemon's copy is left: the port still answers.
        self.listening.close()
        result = self.echo(b"again\n")
        self.assertEqual((result.returncode, result.stdout), (0, b"again\n"), result.stderr)
        self.assertEqual([cn for _, cn, _, _ in daemon.accepted()], ["client", "client"])

    def test_connectionWaitsForRestart(self) -> None:
        """
        As under systemd, which keeps the socket while the service restarts:
        a stopped daemon leaves the socket listening (it does not shut it
        down), a client connecting meanwhile is queued by the kernel, and
        the next daemon serves it.
        """
        self.inherit()
        first = self.activate(logName="first.log")
        self.assertServesInheritedSocket(first)
        first.stop()
        self.assertIn("(TCP Port", first.log())

        client = subprocess.Popen(
            [MTLSD, "connect", f"127.0.0.1:{self.port}"],
            cwd=self.directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
        )
        self.addCleanup(client.wait, DEADLINE)
        self.addCleanup(client.kill)
        waitForQueued(self.port)
        second = self.activate(logName="second.log")
        self.assertServesInheritedSocket(second)
        stdout, stderr = client.communicate(b"queued\n", timeout=DEADLINE)
        self.assertEqual((client.returncode, stdout), (0, b"queued\n"), stderr)
        self.assertEqual(first.accepted(), [])
        self.assertEqual([cn for _, cn, _, _ in second.accepted()], ["client"])

    def test_otherProcessDescriptors(self) -> None:
        """
        Descriptors announced for another process (C{LISTEN_PID} not the
        daemon's) are not adopted: C{--listen systemd:} then stops start-up
        with one line naming it, and the daemon binds nothing.
        """
        self.inherit()
        daemon = self.activate(listenPID=str(os.getpid()))
        self.assertNotEqual(daemon.process.wait(DEADLINE), 0)
        log = daemon.log()
        self.assertIn(f"mtlsd: --listen {SYSTEMD_LISTEN}: no such socket was passed", log)
        self.assertNotIn("starting on", log)
        self.assertNotIn("Traceback", log)

    def test_inheritedIPv6Socket(self) -> None:
        """
        An IPv6 socket (as from C{ListenStream=[::]:8443}) is adopted with
        C{domain=INET6}, and clients' addresses are logged right.
        """
        if not socket.has_ipv6 or not os.path.exists("/proc/net/tcp6"):
            raise SkipTest("no IPv6")
        try:
            self.inherit(socket.AF_INET6)
        except OSError as e:
            raise SkipTest(f"no IPv6 loopback: {e}") from None
        daemon = self.activate("systemd:domain=INET6:index=0")
        self.assertServesInheritedSocket(daemon)
        result = self.echo(b"hello\n")
        self.assertEqual((result.returncode, result.stdout), (0, b"hello\n"), result.stderr)
        daemon.waitForLog(r"\[mtlsd#info\] accepted \[::1\]:\d+: CN=client ")
