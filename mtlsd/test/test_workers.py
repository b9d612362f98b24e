"""
Unit tests of L{mtlsd._workers}: the role a worker is given, and the main
process's pool with a fake reactor (the real processes are in
C{tests/test_workers.py}).
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any, cast

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import eventAsJSON, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from mtlsd import _signals
from mtlsd._errors import ConfigurationError
from mtlsd._signals import SignalFanOut
from mtlsd._workers import (
    LOG_FD,
    MAX_RESTART_DELAY,
    RESTART_DELAY,
    STABLE_AFTER,
    WORKER_ENVIRONMENT,
    WorkerPool,
    WorkerRole,
)


class _Transport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _Reactor(Clock):
    """
    A clock that records the processes it is asked to spawn.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: dict[str, str],
                     childFDs: dict[int, Any]) -> _Transport:  # fmt: skip
        transport = _Transport(1000 + len(self.spawned))
        protocol.makeConnection(transport)
        self.spawned.append({"protocol": protocol, "args": args, "env": env, "fds": childFDs})
        return transport

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


class _Port:
    def __init__(self, fd: int, family: int) -> None:
        self._fd = fd
        self.socket = socket.socket(family, socket.SOCK_STREAM)

    def fileno(self) -> int:
        return self._fd


class WorkerRoleTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        The role the main process encodes is what the worker reads from its
        environment; without the variable a process is no worker.
        """
        role = WorkerRole(2, ((4, socket.AF_INET6), (5, socket.AF_UNIX)))
        self.patch(os, "environ", {WORKER_ENVIRONMENT: role.encode()})
        self.assertEqual(WorkerRole.fromEnvironment(), role)
        self.patch(os, "environ", {})
        self.assertIsNone(WorkerRole.fromEnvironment())

    def test_endpoints(self) -> None:
        """
        Each listener gets its inherited socket, a C{haproxy:} one wrapped to
        read the PROXY header; the listeners of a later service take the
        sockets after the earlier ones'; more listeners than sockets is a
        configuration error.
        """
        role = WorkerRole(1, ((4, socket.AF_INET), (5, socket.AF_INET)))
        endpoints: Any = role.endpoints(Clock(), ["tcp:1", "haproxy:tcp:2"])
        [(plain, tcp), (proxied, wrapped)] = endpoints
        self.assertEqual((plain, proxied), ("tcp:1 (worker 1)", "haproxy:tcp:2 (worker 1)"))
        self.assertEqual((tcp.fileno, tcp.addressFamily), (4, socket.AF_INET))
        self.assertEqual(type(wrapped).__name__, "_WrapperServerEndpoint")
        [(second, adopted)] = cast(Any, role.endpoints(Clock(), ["tcp:3"], 1))
        self.assertEqual(adopted.fileno, 5)
        self.assertRaises(ConfigurationError, role.endpoints, Clock(), ["tcp:1", "tcp:2", "tcp:3"])
        self.assertRaises(ConfigurationError, role.endpoints, Clock(), ["tcp:1", "tcp:2"], 1)


class WorkerPoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        # SIGHUP's fan-out of this test alone (no reloader another test left).
        self.sighup = SignalFanOut(signal.SIGHUP)
        self.patch(_signals, "sighup", self.sighup)
        self.reactor = _Reactor()
        self.events: list[dict[str, Any]] = []
        self.ports = [_Port(17, socket.AF_INET6)]
        self.addCleanup(self.ports[0].socket.close)
        ports: Any = lambda: self.ports  # noqa: E731
        publish: Any = self.events.append
        self.pool = WorkerPool(self.reactor, 2, ["--port", "0"], ports, publish)
        self.pool.startService()
        self.addCleanup(lambda: self.pool.running and self.pool.stopService())

    def test_spawn(self) -> None:
        """
        Each worker is twistd with the same options, the listening sockets
        from file descriptor 4 and a pipe for its log on 3.
        """
        self.assertEqual(len(self.reactor.spawned), 2)
        first = self.reactor.spawned[0]
        self.assertEqual(first["args"][-5:], ["-n", "--pidfile=", "mtlsd", "--port", "0"])
        self.assertEqual(first["fds"], {0: "w", 1: "r", 2: "r", LOG_FD: "r", 4: 17})
        self.assertEqual(first["env"][WORKER_ENVIRONMENT], f"1 4:{int(socket.AF_INET6)}")
        self.assertTrue(self.pool.allRunning)

    def test_logRecords(self) -> None:
        """
        A worker's log records, even split across reads, are published
        marked with its number; its warnings are not (the main process gives
        them); an unreadable record is reported.
        """
        worker = self.reactor.spawned[1]["protocol"]
        accepted = eventAsJSON({"mtlsdEvent": "accepted", "log_format": "hi", "log_time": 1.0})
        warning = eventAsJSON({"mtlsdEvent": "warning", "log_format": "w", "log_time": 1.0})
        data = f"\x1e{accepted}\n\x1e{warning}\n\x1e{{broken\n".encode()
        worker.childDataReceived(LOG_FD, data[:10])
        self.assertEqual(self.events, [])
        worker.childDataReceived(LOG_FD, data[10:])
        self.assertEqual([(e["mtlsdEvent"], e["mtlsdWorker"]) for e in self.events],
                         [("accepted", 2)])  # fmt: skip

    def test_earlyOutput(self) -> None:
        """
        What a worker prints on its standard output or error (before its log
        is set up) is logged by the main process, a warning per line.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        worker = self.reactor.spawned[0]["protocol"]
        worker.childDataReceived(2, b"mtlsd: cannot read key.pem\n\n")
        [event] = events
        self.assertEqual((event["mtlsdWorker"], event["line"]), (1, "mtlsd: cannot read key.pem"))

    def test_restart(self) -> None:
        """
        A worker that dies is started again after L{RESTART_DELAY}.
        """
        worker = self.reactor.spawned[0]["protocol"]
        worker.processEnded(Failure(ProcessTerminated(signal=9)))
        self.assertFalse(self.pool.allRunning)
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertIn("1 4:", self.reactor.spawned[2]["env"][WORKER_ENVIRONMENT])
        self.assertTrue(self.pool.allRunning)

    def test_backoff(self) -> None:
        """
        A worker that keeps exiting soon after its start is restarted after
        1, 2, 4 ... seconds, at most L{MAX_RESTART_DELAY}; one that ran a
        while is restarted after 1 s again.
        """
        delays = []
        for _ in range(8):
            self.pool.workers[1].processEnded(Failure(ProcessTerminated(exitCode=1)))
            delay = self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds()
            delays.append(delay)
            self.reactor.advance(delay)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, MAX_RESTART_DELAY, MAX_RESTART_DELAY])
        self.reactor.advance(STABLE_AFTER)
        self.pool.workers[1].processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds(),
                         RESTART_DELAY)  # fmt: skip

    def test_stop(self) -> None:
        """
        Stopping sends SIGTERM to every worker and waits until all have
        exited; none is restarted.
        """
        stopped = self.pool.stopService()
        workers = [s["protocol"] for s in self.reactor.spawned]
        self.assertEqual([w.transport.signals for w in workers], [["TERM"], ["TERM"]])
        workers[0].processEnded(Failure(ProcessDone(0)))
        self.assertNoResult(stopped)
        workers[1].processEnded(Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_sighup(self) -> None:
        """
        SIGHUP goes on to every worker.
        """
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        workers = [s["protocol"] for s in self.reactor.spawned]
        self.assertEqual([w.transport.signals for w in workers], [["HUP"], ["HUP"]])

    def test_sighupWithReloader(self) -> None:
        """
        The pool and this process's own reloader answer SIGHUP through one
        handler: one signal reaches both, and a handler installed before
        them is still called; the pool stopping first leaves the reloader
        answering.
        """
        self.pool.stopService()
        before: list[int] = []
        signal.signal(signal.SIGHUP, lambda signum, frame: before.append(signum))
        ports: Any = lambda: self.ports  # noqa: E731
        publish: Any = self.events.append
        pool = WorkerPool(self.reactor, 1, [], ports, publish)
        pool.startService()
        reloads: list[str] = []
        unsubscribe = self.sighup.subscribe(self.reactor, lambda: reloads.append("reload"))
        self.addCleanup(unsubscribe)
        os.kill(os.getpid(), signal.SIGHUP)
        [worker] = [s["protocol"].transport for s in self.reactor.spawned[2:]]
        self.assertEqual((reloads, worker.signals, before), (["reload"], ["HUP"], [signal.SIGHUP]))
        pool.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual((reloads, worker.signals), (["reload"] * 2, ["HUP", "TERM"]))
        self.assertEqual(before, [signal.SIGHUP] * 2)
