# -*- test-case-name: mtlsd.test.test_tap -*-
"""
The twistd plugin: C{twistd -n mtlsd [options]}, the daemon's services.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.logger import ILogObserver, Logger, globalLogPublisher

from ._address import formatAddress
from ._apps import appFactory
from ._build import MtlsServer
from ._context import ServerContext
from ._errors import ConfigurationError
from ._events import emit, serviceField
from ._listening import ListeningService, pause, plainEndpoints
from ._logging import logObserver
from ._metrics import Metrics, metricsSite
from ._options import Options, serverConfiguration
from ._pki import DEFAULT_PKI_DIR
from ._server import gateFactory
from ._services import ServiceOptions, sharedAddresses
from ._settings import ServerTLSSettings
from ._sni import ServerNameRouter
from ._workers import WatchMainProcess, WorkerPool, WorkerRole

__all__ = ["Options", "makeService"]  # Options: what twistd's ServiceMaker reads here

log = Logger(namespace="mtlsd")


def raiseDescriptorLimit() -> tuple[int, int]:
    """
    Raise this process's soft limit on open files to its hard limit, as Go
    programs and HAProxy do at start: each connection takes a descriptor
    (two with a backend), and the usual soft limit, 1,024, would refuse
    clients long before memory runs out.

    @return: the soft limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, hard


def makeService(options: Options, reactor: IReactorCore | None = None) -> IService:
    """
    Build the mtlsd service from parsed options.  Bad files end the process
    with one line naming the problem.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    role = WorkerRole.fromEnvironment()
    raiseDescriptorLimit()
    services: list[tuple[str | None, Options]] = [
        (each.name, each.options) for each in options.services
    ] or [(None, options)]
    # Services sharing an address: the first listens, the others are chosen
    # by server name on its connections.
    shared = {group[0].name: group for group in sharedAddresses(options.services)}
    followers = {each.name for group in shared.values() for each in group[1:]}
    built = []
    first = 0  # a worker's sockets: every listening service's, in their order
    for name, serviceOptions in services:
        try:
            built.append(
                (
                    name,
                    serviceOptions,
                    MtlsServer(serverConfiguration(serviceOptions, name), cast(Any, reactor)),
                    appFactory(serviceOptions, reactor, name),
                    []
                    if name in followers
                    else plainEndpoints(reactor, serviceOptions, role, first),
                )
            )
            first += len(built[-1][4])
        except ConfigurationError as e:
            where = "" if name is None else f"service {name!r}: "
            raise SystemExit(f"mtlsd: {where}{e}") from None
    if role is not None and first != len(role.sockets):
        raise SystemExit(
            f"mtlsd: worker {role.index}: {len(role.sockets)} sockets for {first} listeners."
        )
    getters = {name: _settingsOf(server) for name, _, server, _, _ in built}
    metrics = (
        Metrics(getters[None])
        if None in getters
        else Metrics(services={str(name): getter for name, getter in getters.items()})
    )
    service = _DaemonService(options, metrics, role)
    supervising = role is None and options["workers"] > 1
    serviceOf: dict[ListeningService, str | None] = {}  # every listener, with its service
    servers = {name: (server, app) for name, _, server, app, _ in built}
    for name, serviceOptions, server, app, plain in built:
        server.reloader.setServiceParent(service)
        _Drain(server.context, reactor, options["drain-timeout"], name).setServiceParent(service)
        group = shared.get(name or "", [])
        router = _router(group, servers, reactor) if len(group) > 1 else None
        for description, endpoint in plain:
            listener = ListeningService(
                description if name is None else f"service {name!r}: {description}",
                server.endpoint(endpoint, False, router),
                app,
                partial(_onListening, serviceOptions, group if router else name, supervising, role),
            )
            listener.setServiceParent(service)
            serviceOf[listener] = name
    listeners = list(serviceOf)
    pool = None
    if supervising:
        pool = WorkerPool(
            reactor,
            options["workers"],
            options.arguments,
            lambda: [cast(IListeningPort, each.port) for each in listeners],
            globalLogPublisher,
        )
        pool.setServiceParent(service)
    if role is not None:
        WatchMainProcess().setServiceParent(service)
    elif options["metrics"]:
        service.metricsService = _metricsService(
            options["metrics"], reactor, service, serviceOf, pool
        )
    if _daemonizing(options):
        _bindBeforeDaemonizing([*listeners, service.metricsService])
    return service


def _settingsOf(server: MtlsServer) -> Callable[[], ServerTLSSettings]:
    return lambda: server.context.settings


def _router(
    group: list[ServiceOptions],
    servers: dict[str | None, tuple[MtlsServer, Any]],
    reactor: Any,
) -> ServerNameRouter:
    """
    The chooser of the services sharing the first one's address.
    """
    entries = []
    for number, each in enumerate(group):
        server, app = servers[each.name]
        gate = None
        if number:
            configuration = server.configuration
            gate = gateFactory(
                server.context,
                app,
                server.limits,
                reactor,
                configuration.quietRejections,
                each.name,
            )
        entries.append((each, server.context, gate))
    router = ServerNameRouter(entries)
    servers[group[0].name][0].context.chooseServiceWith(router.callback)
    return router


def _onListening(
    options: Options,
    name: str | None | list[ServiceOptions],
    supervising: bool,
    role: WorkerRole | None,
    port: IListeningPort,
) -> None:
    """
    A listener of a service (or of services chosen by server name) is up:
    with C{--workers}, leave accepting to the workers; on the development
    PKI, say how to try it.
    """
    if supervising:
        pause(port)  # its workers accept
    address = formatAddress(port.getHost())
    if isinstance(name, list):
        for each in name:
            log.info(
                "service {service}: listening on {address} for server names {names}",
                service=each.name,
                address=address,
                names=(", ".join(each.serverNames) or "(none)")
                + ("; the default" if each.default else ""),
            )
    elif name is not None:
        log.info("service {service}: listening on {address}", service=name, address=address)
    tcpPort = getattr(port.getHost(), "port", None)
    if role is None and not options["cert"] and tcpPort is not None:
        command = _connectCommand(options, f"localhost:{tcpPort}")
        names = [n for n in (name[0].serverNames if isinstance(name, list) else ()) if "*" not in n]
        if names and not command.startswith("curl"):
            command += f" --servername {names[0]}"
        log.info("try: {command}", command=command)


def _metricsService(
    description: str,
    reactor: Any,
    service: _DaemonService,
    listeners: dict[ListeningService, str | None],
    pool: WorkerPool | None,
) -> ListeningService:
    """
    The service of C{--metrics}: C{/metrics}, and C{/healthz}, healthy while
    every listener (and worker) is up; it names a service that is not.

    @param listeners: each listener, with the name of its service.
    """
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:
        raise SystemExit(f"mtlsd: --metrics {description}: {e}") from None

    def down() -> list[str]:
        problems = sorted(
            {
                "not listening" if name is None else f"service {name!r}: not listening"
                for listener, name in listeners.items()
                if not listener.listening
            }
        )
        if pool is not None and not pool.allRunning:
            problems.append("not listening")
        return problems

    return ListeningService(
        f"--metrics {description}", endpoint, metricsSite(service.metrics, down)
    )


def _bindBeforeDaemonizing(listeners: list[ListeningService | None]) -> None:
    """
    Bind before twistd daemonizes (its start-up runs in the daemon after
    the fork, where a failure left the twistd command waiting for ever): a
    port in use, or one this user may not bind, ends the command with one
    line, before any pid file is written.  The sockets are inherited by the
    daemon, as root's would be before C{--uid}/C{--gid}.  In the foreground
    (C{-n}, twist) the listeners bind at start-up as Twisted's do, just
    before the reloader starts answering SIGHUP.
    """
    for listener in listeners:
        if listener is not None:
            listener.bind()


def _daemonizing(options: Options) -> bool:
    """
    Whether twistd will daemonize (fork into the background) to run them.
    """
    twistd = getattr(options, "parent", None)
    return twistd is not None and "nodaemon" in twistd and not twistd["nodaemon"]


def _connectCommand(options: Options, where: str) -> str:
    """
    The C{mtlsd connect} command (C{curl}, in the HTTP mode) that works with
    the development PKI, with this installation's C{mtlsd} (named by its path when it is not the one
    on C{PATH}, as after the README's quick start).
    """
    if options["forward-http"]:
        pki = options["pki"]
        return (
            f"curl --cacert {pki}/ca.crt --cert {pki}/client.crt --key {pki}/client.key"
            f" https://{where}/ (forwarded to {options['forward-http']})"
        )
    mtlsd = os.path.join(os.path.dirname(sys.executable), "mtlsd")
    if not os.path.exists(mtlsd) or shutil.which("mtlsd") == mtlsd:
        mtlsd = "mtlsd"
    elif not os.path.relpath(mtlsd).startswith(".."):
        mtlsd = os.path.relpath(mtlsd)
    command = f"echo hello | {mtlsd} connect {where}"
    if options["pki"] != DEFAULT_PKI_DIR:
        command += f" --pki {options['pki']}"
    return command


class _DaemonService(MultiService):
    """
    The daemon: its listeners, reloader and drain, plus its log output
    (text or JSON, installed as the application's log observer, which twistd
    uses unless given C{--logger}) and its metrics, fed by the log events.
    """

    def __init__(self, options: Options, metrics: Metrics, role: WorkerRole | None = None) -> None:
        super().__init__()
        self.options = options
        self.metrics = metrics
        self.role = role
        # Not a child: it stops only after the drain, to be watched during it.
        self.metricsService: ListeningService | None = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        twistd = getattr(self.options, "parent", None)
        if twistd is not None and hasattr(parent, "setComponent") and not twistd.get("syslog"):
            parent.setComponent(
                ILogObserver,
                self.role.logObserver()
                if self.role is not None
                else logObserver(
                    self.options["log-format"],
                    twistd.get("logfile", ""),
                    twistd.get("nodaemon", False),
                ),
            )

    def startService(self) -> None:
        globalLogPublisher.addObserver(self.metrics)
        super().startService()
        if self.metricsService is not None:
            self.metricsService.startService()

    def stopService(self) -> Deferred[None]:
        stopping = maybeDeferred(super().stopService)

        def stopMetrics(result: object) -> object:
            globalLogPublisher.removeObserver(self.metrics)
            if self.metricsService is not None:
                return self.metricsService.stopService()
            return None

        return stopping.addBoth(stopMetrics)


class _Drain(Service):
    """
    At shutdown (SIGTERM), once the listeners have stopped, gives live
    connections C{timeout} seconds to finish, then cuts the rest.
    """

    def __init__(
        self, context: ServerContext, clock: Any, timeout: float, service: str | None = None
    ) -> None:
        self._serviceField = serviceField(service)
        self._context = context
        self._clock = clock
        self._timeout = timeout

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if not self._context.sessions:
            return None
        emit(
            log,
            "draining",
            **self._serviceField,
            timeout=self._timeout,
            count=len(self._context.sessions),
        )
        drained = self._context.sessions.whenDrained()

        def cutTheRest() -> None:
            count = len(self._context.sessions)
            emit(
                log,
                "drain-timeout",
                **self._serviceField,
                count=count,
            )
            for session in list(self._context.sessions):
                session.cut("shutdown")

        timer = self._clock.callLater(self._timeout, cutTheRest)
        return drained.addBoth(lambda result: timer.active() and timer.cancel())
