"""
Black-box tests of the daemon under resource exhaustion: slowloris clients
that never finish the handshake, a flood beyond C{--max-connections}, and no
file descriptor left behind.  Figures (peak RSS, descriptors) go to the test
log.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._process import DEADLINE, POLL, pkiClient, receiveExactly
from tests.test_daemon import DaemonTestMixin

SLOWLORIS = 2000
# The start of a TLS handshake record (type 22, TLS 1.0 record version, a
# length), then nothing: the ClientHello never completes.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01"


def raiseDescriptorLimit(wanted: int) -> None:
    """
    Raise this process's (and so the daemon's) descriptor limit to
    C{wanted}, or skip.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard < wanted:
        raise SkipTest(f"needs {wanted} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settledDescriptors(pid: int) -> int:
    """
    The daemon's descriptor count once a connection that just ended is
    closed on its side too (the count holds for 0.3 s).
    """
    count, end = descriptors(pid), time.monotonic() + DEADLINE
    while time.monotonic() < end:
        time.sleep(0.3)
        if (now := descriptors(pid)) == count:
            break
        count = now
    return count


def status(pid: int, field: str) -> int:
    """
    A KiB figure from C{/proc/PID/status}, e.g. C{VmHWM} (peak RSS).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def closedByPeer(sockets: list[socket.socket], deadline: float) -> int:
    """
    Wait until the peer has closed each socket (EOF or reset).

    @return: how many it closed before C{deadline} (seconds from now).
    """
    pending = {s.fileno(): s for s in sockets}
    end = time.monotonic() + deadline
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed = 0
    while pending and time.monotonic() < end:
        for fd, _ in poller.poll(max(0, end - time.monotonic()) * 1000):
            sock = pending.pop(fd, None)
            if sock is None:
                continue
            poller.unregister(fd)
            try:
                if sock.recv(4096) == b"":
                    closed += 1
                else:  # an alert, then the close
                    pending[fd] = sock
                    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            except ConnectionError:
                closed += 1
    return closed


class ExhaustionTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        previous = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, previous)
        raiseDescriptorLimit(2 * SLOWLORIS + 512)

    def client(self, daemon, directory: str):
        pki = os.path.join(directory, "mtlsd-pki")
        return pkiClient(daemon.port, pki)

    def echo(self, daemon, directory: str) -> float:
        """
        One legitimate client's round trip; how long it took, connect included.
        """
        start = time.monotonic()
        with self.client(daemon, directory) as sock:
            sock.sendall(b"still here")
            self.assertEqual(receiveExactly(sock, 10), b"still here")
        return time.monotonic() - start

    def test_slowloris(self) -> None:
        """
        2,000 clients that send a partial ClientHello and then nothing are
        all closed by the handshake timeout; meanwhile legitimate clients
        get through; afterwards the daemon holds as many descriptors as
        before, and its peak RSS stays bounded.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--handshake-timeout", "3", "--reload-interval", "0")
        pid = daemon.process.pid
        self.echo(daemon, directory)  # warm: what a serving daemon holds
        before = settledDescriptors(pid)
        rssBefore = status(pid, "VmRSS")
        attackers = []
        try:
            for _ in range(SLOWLORIS):
                sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=DEADLINE)
                sock.sendall(PARTIAL_HELLO)
                attackers.append(sock)
            during = [self.echo(daemon, directory) for _ in range(3)]
            shed = closedByPeer(attackers, 3 + DEADLINE)
        finally:
            for sock in attackers:
                sock.close()
        self.assertEqual(shed, SLOWLORIS)
        self.assertLess(max(during), 5.0)
        end = time.monotonic() + DEADLINE
        while descriptors(pid) > before and time.monotonic() < end:
            time.sleep(POLL)
        after = descriptors(pid)
        peak = status(pid, "VmHWM")
        self.assertLessEqual(after, before)
        self.assertLess(peak, 400 * 1024)  # KiB
        self.assertLess(self.echo(daemon, directory), 5.0)
        daemon.waitForLog("handshake timeout", count=SLOWLORIS)
        print(
            f"\nslowloris: {SLOWLORIS} shed by the 3 s handshake timeout; legitimate round"
            f" trips during it {max(during) * 1000:.0f} ms at most; descriptors {before} before,"
            f" {after} after; RSS {rssBefore // 1024} MiB before, peak {peak // 1024} MiB"
        )

    def test_floodBeyondMaxConnections(self) -> None:
        """
        With C{--max-connections 50}, 50 idle connections are held and every
        connection beyond is closed at once (logged C{refused}); once they
        go, clients are served again and no descriptor is left behind.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--max-connections", "50", "--reload-interval", "0")
        pid = daemon.process.pid
        self.echo(daemon, directory)
        before = settledDescriptors(pid)
        held = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(50)]
        end = time.monotonic() + DEADLINE
        while descriptors(pid) < before + 50 and time.monotonic() < end:
            time.sleep(POLL)  # until the daemon has accepted them all
        extra: list[socket.socket] = []
        try:
            start = time.monotonic()
            extra = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(200)]
            refused = closedByPeer(extra, DEADLINE)
            took = time.monotonic() - start
            self.assertEqual(refused, 200)
            self.assertEqual(closedByPeer(held, 0.5), 0)  # the 50 are still held
        finally:
            for sock in held + extra:
                sock.close()
        daemon.waitForLog(r"refused .*max-connections", count=200)
        end = time.monotonic() + DEADLINE
        while descriptors(pid) > before and time.monotonic() < end:
            time.sleep(POLL)
        self.assertEqual(descriptors(pid), before)
        self.echo(daemon, directory)
        print(f"\nflood: 200 connections beyond --max-connections 50 refused in {took:.2f} s")
