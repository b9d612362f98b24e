# -*- test-case-name: mtlsd.test.test_tap -*-
"""
Where the daemon listens: the plain endpoints its options name (or a
worker inherits), and the services that listen on them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure

from ._errors import ConfigurationError
from ._options import DEFAULT_PORT
from ._server import DEFAULT_BACKLOG
from ._workers import WorkerRole


def _allInterfaces() -> str:
    """
    The address meaning "all interfaces": C{::}, which takes IPv4 clients
    too, where the system has IPv6 with dual-stack sockets; else C{0.0.0.0}.
    """
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            # Off by default where the system is dual-stack (Linux's
            # net.ipv6.bindv6only = 0).
            dualStack = not probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    except OSError:
        return "0.0.0.0"
    return "::" if dualStack else "0.0.0.0"


def listenDescriptions(options: Any) -> list[str]:
    """
    The plain server endpoints to listen on: C{--listen}'s, or the one of
    C{--port} and C{--interface}.
    """
    if options["listen"]:
        return list(options["listen"])
    port = DEFAULT_PORT if options["port"] is None else options["port"]
    interface = options["interface"] or _allInterfaces()
    return [f"tcp:{port}:interface={quoteStringArgument(interface)}"]


def plainEndpoints(
    reactor: Any, options: Any, role: WorkerRole | None, first: int = 0
) -> list[tuple[str, IStreamServerEndpoint]]:
    """
    @param options: the daemon's options (C{listen}, C{port}, C{interface}).
    @param role: this worker's, if it is one (it adopts the main process's
        sockets).
    @param first: for a worker, the index of the first of these listeners'
        sockets among those of every service.
    @return: each plain endpoint to listen on, with the option that names
        it (C{--listen DESCRIPTION}, C{--port PORT}), for messages.
    @raise ConfigurationError: for a description that names no endpoint.
    """
    named = [f"--listen {d}" for d in options["listen"]] or [
        f"--port {DEFAULT_PORT if options['port'] is None else options['port']}"
    ]
    if role is not None:
        adopted = role.endpoints(reactor, listenDescriptions(options), first)
        return [(name, endpoint) for name, (_, endpoint) in zip(named, adopted, strict=True)]
    endpoints = []
    backlog = "" if options["listen"] else f":backlog={DEFAULT_BACKLOG}"
    for name, description in zip(named, listenDescriptions(options), strict=True):
        try:
            endpoints.append((name, serverFromString(reactor, description + backlog)))
        except IndexError:
            # Twisted's systemd: parser, with no matching inherited socket
            raise ConfigurationError(
                f"--listen {description}: no such socket was passed to this process"
                " (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES, as systemd sets them)."
            ) from None
        except Exception as e:
            raise ConfigurationError(f"--listen {description}: {e}") from None
    return endpoints


def pause(port: IListeningPort) -> None:
    """
    Keep a listening socket open without accepting on it (the main process
    of C{--workers}: its workers accept).
    """
    port.stopReading()  # type: ignore[attr-defined]


class ListeningService(Service):
    """
    Listens on one endpoint while running, from its privileged start (as
    Twisted's L{StreamServerEndpointService}, so that twistd's C{--uid} and
    C{--gid} drop root after a port below 1024 is bound).  Unlike Twisted's,
    a failure to listen (a port in use, an address not on this host) stops
    start-up with one line.
    """

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        onListening: Callable[[IListeningPort], object] = lambda port: None,
    ) -> None:
        self._description = description
        self._endpoint = endpoint
        self._factory = factory
        self._onListening = onListening
        self._port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Before twistd gives up root (--uid/--gid): a port below 1024 needs it.
        super().privilegedStartService()
        self.bind()

    def startService(self) -> None:
        super().startService()
        self.bind()

    def bind(self) -> None:
        """
        Listen now, if not listening yet.

        @raise SystemExit: with one line, if it cannot listen.
        """
        if self._port is None:
            self._listen()

    def _listen(self) -> None:
        outcome: list[IListeningPort | Failure] = []
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if not outcome:
            raise SystemExit(f"mtlsd: {self._description} did not start listening at once.")
        if isinstance(outcome[0], Failure):
            raise SystemExit(
                f"mtlsd: cannot listen on {self._description}: {outcome[0].getErrorMessage()}"
            )
        self._port = outcome[0]
        self._onListening(self._port)

    @property
    def port(self) -> IListeningPort | None:
        """
        The listening port, while running.
        """
        return self._port

    @property
    def listening(self) -> bool:
        """
        Whether this service is listening.
        """
        return self._port is not None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._port is None:
            return None
        port, self._port = self._port, None
        return port.stopListening()
