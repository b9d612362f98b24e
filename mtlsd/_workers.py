# -*- test-case-name: mtlsd.test.test_workers -*-
"""
C{--workers N}: several processes serve one daemon's sockets.

The process twistd starts (the main process) listens on every configured
socket but accepts nothing itself: it starts N worker processes (twistd
again, with the same options), which inherit the listening sockets and
adopt them (L{IReactorSocket.adoptStreamPort}, through Twisted's
L{AdoptedStreamServerEndpoint}), each with its own reactor, TLS context and
reloader.  The kernel hands each new connection to one of them.

The main process:
 - forwards SIGHUP to every worker (each reloads), and at shutdown sends
   SIGTERM to each and waits until all have drained and exited;
 - restarts a worker that dies;
 - receives every worker's log events on a pipe (Twisted's JSON log
   records) and publishes them as its own, so that there is one log, one
   place for rotation, and its metrics count the events of all workers.

A worker learns its role from the C{MTLSD_WORKER} environment variable; it
stops (draining as on SIGTERM) when the main process goes away (its standard
input, a pipe from the main process, closes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from twisted.application.service import Service
from twisted.internet import stdio
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import ILogObserver, Logger, LogPublisher, eventFromJSON, jsonFileLogObserver
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python.failure import Failure

from . import _signals
from ._errors import ConfigurationError
from ._events import emit

WORKER_ENVIRONMENT = "MTLSD_WORKER"
LOG_FD = 3
FIRST_SOCKET_FD = 4
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
STABLE_AFTER = 10.0

# twistd, as the main process was started, in the worker's interpreter.
# SIGHUP is ignored until the worker's reloader handles it: the main process
# forwards it to every worker, and its default action would kill one still
# starting (which reads the files afresh anyway).
_TWISTD = (
    "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN);"
    " sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
)

log = Logger(namespace="mtlsd")


@frozen
class WorkerRole:
    """
    What a worker process is told by the main process.

    @ivar index: this worker's number, from 1.
    @ivar sockets: the inherited listening sockets, as (file descriptor,
        address family), in the order of the daemon's listeners.
    """

    index: int
    sockets: tuple[tuple[int, int], ...]

    def encode(self) -> str:
        return f"{self.index} " + ",".join(f"{fd}:{family}" for fd, family in self.sockets)

    @classmethod
    def fromEnvironment(cls) -> WorkerRole | None:
        """
        @return: this process's role if it is a worker, else L{None}.
        """
        value = os.environ.get(WORKER_ENVIRONMENT)
        if not value:
            return None
        index, _, sockets = value.partition(" ")
        return cls(
            int(index),
            tuple(
                (int(fd), int(family))
                for fd, family in (pair.split(":") for pair in sockets.split(",") if pair)
            ),
        )

    def endpoints(
        self, reactor: Any, descriptions: Sequence[str], first: int = 0
    ) -> list[tuple[str, IStreamServerEndpoint]]:
        """
        The inherited sockets as endpoints, for the listeners C{descriptions}
        (a C{haproxy:} listener reads the PROXY header here too).

        @param first: the index of the first of their sockets (the
            listeners of every service are passed in the services' order).
        """
        sockets = self.sockets[first : first + len(descriptions)]
        if len(descriptions) != len(sockets):
            raise ConfigurationError(
                f"worker {self.index}: {len(self.sockets)} sockets for"
                f" {first + len(descriptions)} listeners."
            )
        endpoints = []
        for description, (fd, family) in zip(descriptions, sockets, strict=True):
            endpoint: IStreamServerEndpoint = AdoptedStreamServerEndpoint(reactor, fd, family)
            if description.startswith("haproxy:"):
                endpoint = proxyEndpoint(endpoint)
            endpoints.append((f"{description} (worker {self.index})", endpoint))
        return endpoints

    def logObserver(self) -> ILogObserver:
        """
        Where a worker logs: the pipe to the main process.
        """
        return jsonFileLogObserver(os.fdopen(LOG_FD, "w"))


class _MainGone(Protocol):
    def __init__(self, service: WatchMainProcess) -> None:
        self.service = service

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.service.running:
            return  # this worker is stopping anyway
        from twisted.internet import reactor

        log.info("main process gone: stopping")
        reactor.stop()


class WatchMainProcess(Service):
    """
    In a worker: stop when the main process's end of standard input closes.
    """

    def startService(self) -> None:
        super().startService()
        devnull = os.open(os.devnull, os.O_WRONLY)
        stdio.StandardIO(_MainGone(self), stdin=0, stdout=devnull)  # type: ignore[call-arg]


class _Worker(ProcessProtocol):
    """
    The main process's end of one worker: its log events, its exit.
    """

    def __init__(self, pool: WorkerPool, index: int, startedAt: float) -> None:
        self.pool = pool
        self.index = index
        self.startedAt = startedAt
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != LOG_FD:
            # What a worker prints before its log is set up (a start-up
            # error, say): the main process's log, not a daemon's /dev/null.
            for line in data.decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.warn("worker {mtlsdWorker}: {line}", mtlsdWorker=self.index, line=line)
            return
        *records, self._buffer = (self._buffer + data).split(b"\n")
        for record in records:
            self.pool.publishRecord(self.index, record)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool.workerEnded(self, reason)


class WorkerPool(Service):
    """
    In the main process: runs C{count} workers on this process's listening
    sockets, and restarts one that exits: after L{RESTART_DELAY}, doubled
    (up to L{MAX_RESTART_DELAY}) each time a worker exits within
    L{STABLE_AFTER} seconds of its start, so that one that cannot start
    (say, a file it cannot read) does not spin.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        arguments: Sequence[str],
        ports: Callable[[], Sequence[IListeningPort]],
        publish: LogPublisher | ILogObserver,
    ) -> None:
        """
        @param arguments: the mtlsd options of the main process, given to
            each worker.
        @param ports: gives the main process's listening ports, started
            (before this service) and not accepting.
        @param publish: where the workers' log events go.
        """
        self._reactor = reactor
        self._count = count
        self._arguments = list(arguments)
        self._ports = ports
        self._publish = publish
        self.workers: dict[int, _Worker] = {}
        self._delays: dict[int, float] = {}
        self._stopping = False
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def allRunning(self) -> bool:
        """
        Whether every worker is running.
        """
        return len(self.workers) == self._count

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        # Alongside this process's own reloader, through the one handler.
        self._unsubscribe = _signals.sighup.subscribe(self._reactor, self._forwardSighup)
        for index in range(1, self._count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", LOG_FD: "r"}
        sockets = []
        for n, port in enumerate(self._ports()):
            fd = port.fileno()  # type: ignore[attr-defined]
            fds[FIRST_SOCKET_FD + n] = fd
            sockets.append((FIRST_SOCKET_FD + n, port.socket.family))  # type: ignore[attr-defined]
        role = WorkerRole(index, tuple(sockets))
        worker = _Worker(self, index, self._reactor.seconds())
        environment = dict(os.environ, **{WORKER_ENVIRONMENT: role.encode()})
        process = self._reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "mtlsd", *self._arguments],
            env=environment,
            childFDs=fds,
        )
        self.workers[index] = worker
        emit(
            log,
            "worker-started",
            mtlsdWorker=index,
            pid=process.pid,
        )

    def publishRecord(self, index: int, record: bytes) -> None:
        """
        Publish one JSON log record of worker C{index} as an event here.
        """
        try:
            event = eventFromJSON(record.lstrip(b"\x1e").decode("utf-8"))
        except ValueError:
            log.warn("worker {index} wrote an unreadable log record", index=index)
            return
        if event.get("mtlsdEvent") == "warning":
            return  # this process warns about the same files
        event["mtlsdWorker"] = index
        self._publish(event)

    def workerEnded(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        delay = RESTART_DELAY
        if self._reactor.seconds() - worker.startedAt < STABLE_AFTER:
            delay = min(2 * self._delays.get(worker.index, RESTART_DELAY / 2), MAX_RESTART_DELAY)
        self._delays[worker.index] = delay
        emit(
            log,
            "worker-exited",
            mtlsdWorker=worker.index,
            why=reason.getErrorMessage(),
            delay=delay,
        )
        self._reactor.callLater(delay, self._spawn, worker.index)

    def _forwardSighup(self) -> None:
        self._signalAll("HUP")

    def _signalAll(self, name: str) -> None:
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess(name)  # type: ignore[union-attr]
            except ProcessExitedAlready:  # processEnded follows
                pass

    def stopService(self) -> Deferred[Any]:
        """
        Stop every worker (SIGTERM: each drains as the daemon does) and
        wait until all have exited.
        """
        super().stopService()
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        ended = [worker.ended for worker in self.workers.values()]
        self._signalAll("TERM")
        return DeferredList(ended)
