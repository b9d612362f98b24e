# -*- test-case-name: mtlsd.test.test_tap -*-
"""
The twistd plugin: C{twistd -n mtlsd [options]}.
"""

from __future__ import annotations

import importlib
import ipaddress
import math
import os
import re
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import (  # _parse: Twisted's own reading of descriptions
    _parse,
    clientFromString,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.protocols.wire import Echo
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny

from ._config import configArguments, mergeArguments, repeatableOptions
from ._context import DEFAULT_VERIFY_DEPTH, TLS_VERSIONS, ServerContext, ServerTLSSettings
from ._errors import ConfigurationError
from ._logging import FORMATS, jsonLinesObserver, logObserver
from ._metrics import Metrics, metricsSite
from ._pki import DEFAULT_PKI_DIR, DevelopmentPKI
from ._policy import AllowPolicy
from ._proxyheader import VERSIONS as PROXY_VERSIONS
from ._proxyheader import headerMaker
from ._relay import RelayFactory
from ._reload import DEFAULT_RELOAD_INTERVAL, TrustReloader
from ._server import (
    DEFAULT_BACKLOG,
    DEFAULT_HANDSHAKE_TIMEOUT,
    ConnectionLimits,
    MtlsServerEndpoint,
)
from ._workers import WatchMainProcess, WorkerPool, WorkerRole

DEFAULT_PORT = 8082

log = Logger(namespace="mtlsd")


def _number(
    option: str, kind: type[int] | type[float], minimum: float, maximum: float = math.inf
) -> Any:
    """
    A coercer for C{usage.Options} whose error names the option.
    """
    wanted = f"at least {minimum}" if maximum == math.inf else f"from {minimum} to {maximum}"

    def coerce(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not minimum <= number <= maximum:
            raise ValueError(f"--{option} wants a number {wanted}, not {value!r}")
        return number

    coerce.coerceDoc = f"{wanted.capitalize()}."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """
    Options of C{twistd mtlsd}.
    """

    synopsis = "[options]"
    longdesc = (
        "A mutual-TLS server: only clients whose certificate is in (or chains"
        " to) a --client-certs bundle get through to the app.  With no"
        " --cert/--key/--client-certs it runs on a development PKI in --pki"
        " (created on first run)."
    )
    optParameters = [
        [
            "port",
            "p",
            None,
            f"TCP port to listen on (default {DEFAULT_PORT}; 0: any free port)",
            _number("port", int, 0, 65535),
        ],
        [
            "interface",
            "i",
            "",
            "Address to listen on with --port (default: all, IPv4 and IPv6).",
        ],
        [
            "cert",
            "c",
            None,
            "Server certificate PEM, optionally followed by its chain and key.",
        ],
        ["key", "k", None, "Server private key PEM (default: the key inside --cert)."],
        [
            "key-passphrase-file",
            None,
            None,
            "File whose first line is the passphrase of an encrypted --key or PKCS#12 --cert.",
        ],
        [
            "pki",
            None,
            DEFAULT_PKI_DIR,
            "Development PKI directory, used when no --cert, --key or --client-certs is given.",
        ],
        [
            "app",
            None,
            None,
            "'echo' (the default without --forward), or the dotted name of a callable"
            " returning an IProtocolFactory.",
        ],
        [
            "forward",
            None,
            None,
            "Relay each authenticated connection to this plaintext backend, a client endpoint"
            " (tcp:127.0.0.1:8080, unix:/run/app.sock).",
        ],
        [
            "proxy-protocol",
            None,
            None,
            "With --forward, start with a PROXY protocol header: v1, v2 (with the TLS"
            " identity) or v2-full (and the client certificate).",
        ],
        [
            "handshake-timeout",
            None,
            DEFAULT_HANDSHAKE_TIMEOUT,
            "Seconds a client has to complete the TLS handshake",
            _number("handshake-timeout", float, 0.001),
        ],
        [
            "verify-depth",
            None,
            DEFAULT_VERIFY_DEPTH,
            "Longest client certificate chain accepted",
            _number("verify-depth", int, 1),
        ],
        [
            "reload-interval",
            None,
            DEFAULT_RELOAD_INTERVAL,
            "Seconds between checks of the certificate, key, bundle and CRL files (0: only on SIGHUP)",
            _number("reload-interval", float, 0),
        ],
        ["tls-min-version", None, "1.2", "Oldest TLS version accepted: 1.2 or 1.3."],
        [
            "idle-timeout",
            None,
            None,
            "Close connections idle (no byte either way) this many seconds (default: never)",
            _number("idle-timeout", float, 0.001),
        ],
        [
            "max-conn-lifetime",
            None,
            None,
            "Close any connection this many seconds old (default: never)",
            _number("max-conn-lifetime", float, 0.001),
        ],
        [
            "max-connections",
            None,
            None,
            "Refuse new connections beyond this many at once",
            _number("max-connections", int, 1),
        ],
        [
            "max-connections-per-ip",
            None,
            None,
            "Refuse new connections beyond this many at once from one IP address",
            _number("max-connections-per-ip", int, 1),
        ],
        [
            "drain-timeout",
            None,
            30.0,
            "On SIGTERM, seconds live connections have to finish before they are cut",
            _number("drain-timeout", float, 0),
        ],
        [
            "workers",
            None,
            1,
            "Processes accepting connections on the same sockets (default 1; a main process"
            " starts and supervises them)",
            _number("workers", int, 1, 256),
        ],
        [
            "metrics",
            None,
            None,
            "Serve /metrics (Prometheus) and /healthz on this endpoint, e.g. tcp:9102:interface=127.0.0.1.",
        ],
        ["log-format", None, "text", "text or json (one object per line)."],
        [
            "config",
            None,
            None,
            "TOML file of these options (keys are the long names); the command line overrides it.",
        ],
        ["quiet", None, None, "handshake-errors: log rejected handshakes at debug level only."],
    ]
    compData = usage.Completions(
        optActions={
            "cert": usage.CompleteFiles("*.pem *.crt"),
            "key": usage.CompleteFiles("*.pem *.key"),
            "pki": usage.CompleteDirs(),
        }
    )

    optFlags = [
        [
            "crl-check-chain",
            None,
            "Check the CRLs of every CA in the client's chain, not just the leaf's issuer.",
        ],
        [
            "crl-required",
            None,
            "Reject clients whose issuer has no CRL (default: CAs without a --crl are not checked).",
        ],
        [
            "keep-live-sessions",
            None,
            "After a reload, keep established connections whose peer is no longer admitted.",
        ],
        [
            "unsafe-backend",
            None,
            "Allow a --forward backend that is not on loopback or a UNIX socket.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        for name in _REPEATABLE:
            self[name] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the command line, after the settings of C{--config FILE}:
        options given on the command line override the file's (a repeatable
        option given there replaces the file's list).
        """
        argv = list(sys.argv[1:] if options is None else options)
        self.arguments = list(argv)  # for --workers: each worker is given the same
        try:
            path, rest = _takeConfig(argv, self.longOpt)
            if path is not None:
                try:
                    fromFile = configArguments(path, self)
                except ConfigurationError as e:
                    raise usage.UsageError(str(e)) from None
                argv = mergeArguments(fromFile, rest, repeatableOptions(self), self)
                self["config"] = path
            super().parseOptions(argv)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Under twistd or twist, which would print the whole usage on
            # standard output before the error: one line on standard error.
            message = str(e)
            if "not recognized" in message:
                message += " (twistd mtlsd --help lists the options)"
            raise SystemExit(f"mtlsd: {message}") from None

    def opt_client_certs(self, path: str) -> None:
        """
        PEM bundle of trusted client certificates and/or CAs (repeatable).
        """
        self["client-certs"].append(path)

    def opt_client_ca(self, path: str) -> None:
        """
        PEM bundle of CAs trusted to issue client certificates, whatever their keyUsage (repeatable).
        """
        self["client-ca"].append(path)

    def opt_listen(self, description: str) -> None:
        """
        Plain server endpoint to put TLS on, e.g. tcp:8443 (repeatable; replaces --port).
        """
        self["listen"].append(description)

    def opt_crl(self, path: str) -> None:
        """
        Certificate revocation list, PEM or DER (repeatable).
        """
        self["crl"].append(path)

    def opt_allow_cn(self, pattern: str) -> None:
        """
        Admit clients whose CN matches (glob: * one label, ** any; repeatable).
        """
        self["allow-cn"].append(pattern)

    def opt_allow_dns(self, pattern: str) -> None:
        """
        Admit clients with a matching DNS name SAN (glob; repeatable).
        """
        self["allow-dns"].append(pattern)

    def opt_allow_uri(self, pattern: str) -> None:
        """
        Admit clients with a matching URI SAN, e.g. a SPIFFE ID (glob: * one segment; repeatable).
        """
        self["allow-uri"].append(pattern)

    def opt_allow_ip(self, network: str) -> None:
        """
        Admit clients with an IP SAN in this address or network (repeatable).
        """
        self["allow-ip"].append(network)

    def opt_allow_ou(self, unit: str) -> None:
        """
        Admit clients with this organizational unit (repeatable).
        """
        self["allow-ou"].append(unit)

    def opt_allow_fingerprint(self, digest: str) -> None:
        """
        Admit the certificate with this SHA-256 fingerprint (repeatable).
        """
        self["allow-fingerprint"].append(digest)

    def opt_allow_spki(self, digest: str) -> None:
        """
        Admit certificates whose public key has this SHA-256 (repeatable).
        """
        self["allow-spki"].append(digest)

    def policy(self) -> AllowPolicy:
        """
        The allow-list the C{--allow-*} options describe.

        @raise ConfigurationError: for a malformed entry.
        """
        return AllowPolicy(
            commonNames=self["allow-cn"],
            dnsNames=self["allow-dns"],
            uris=self["allow-uri"],
            ipAddresses=self["allow-ip"],
            organizationalUnits=self["allow-ou"],
            fingerprints=self["allow-fingerprint"],
            spkiFingerprints=self["allow-spki"],
        )

    def postOptions(self) -> None:
        if self["app"] and self["forward"]:
            raise usage.UsageError("--app and --forward cannot be used together.")
        if self["proxy-protocol"] and not self["forward"]:
            raise usage.UsageError("--proxy-protocol goes with --forward.")
        if self["proxy-protocol"] not in (None, *PROXY_VERSIONS):
            raise usage.UsageError(
                f"--proxy-protocol must be v1, v2 or v2-full, not {self['proxy-protocol']!r}."
            )
        if self["forward"] and not self["unsafe-backend"]:
            _checkBackend(self["forward"])
        if self["log-format"] not in FORMATS:
            raise usage.UsageError(
                f"--log-format must be text or json, not {self['log-format']!r}."
            )
        twist = getattr(self, "parent", None)
        if self["log-format"] == "json" and twist is not None and "fileLogObserverFactory" in twist:
            # twist (unlike twistd) ignores the application's log observer
            # and writes with the one its options name: mtlsd's JSON lines.
            twist["fileLogObserverFactory"] = jsonLinesObserver
        if self["quiet"] not in (None, "handshake-errors"):
            raise usage.UsageError(f"--quiet takes handshake-errors, not {self['quiet']!r}.")
        if self["tls-min-version"] not in TLS_VERSIONS:
            raise usage.UsageError(
                f"--tls-min-version must be 1.2 or 1.3, not {self['tls-min-version']!r}."
            )
        if self["listen"] and self["port"] is not None:
            raise usage.UsageError("--listen and --port cannot be used together.")
        if self["listen"] and self["interface"]:
            raise usage.UsageError("--interface goes with --port, not --listen.")
        given = [name for name in ("cert", "key", "key-passphrase-file") if self[name]]
        given += [name for name in ("client-certs", "client-ca", "crl") if self[name]]
        if given and "cert" not in given:
            raise usage.UsageError(
                "--key, --key-passphrase-file, --client-certs, --client-ca and --crl need --cert"
                " (or give none of them to use the development PKI)."
            )
        if given and "client-certs" not in given and "client-ca" not in given:
            raise usage.UsageError(
                "--cert needs --client-certs: the bundle of trusted client"
                " certificates (or give none of them to use the development PKI)."
            )


def _takeConfig(argv: list[str], longOptions: list[str]) -> tuple[str | None, list[str]]:
    """
    Find C{--config FILE} (or C{--config=FILE}, or an abbreviation getopt
    would accept) in C{argv}.

    @return: the file, if any, and the other arguments.
    @raise usage.UsageError: if it is given twice.
    """
    names = [option.rstrip("=") for option in longOptions]

    def isConfig(argument: str) -> bool:
        name = argument[2:].partition("=")[0]
        return argument.startswith("--") and (
            name == "config"
            or bool(name)
            and [n for n in names if n.startswith(name)] == ["config"]
        )

    found: str | None = None
    rest: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--":
            rest += [argument, *arguments]
            break
        if not isConfig(argument):
            rest.append(argument)
            continue
        if found is not None:
            raise usage.UsageError("--config was given twice.")
        _, equals, value = argument.partition("=")
        found = value if equals else next(arguments, None)
        if found is None:
            raise usage.UsageError("--config needs a file name.")
    return found, rest


_REPEATABLE = (
    "client-certs",
    "client-ca",
    "listen",
    "crl",
    "allow-cn",
    "allow-dns",
    "allow-uri",
    "allow-ip",
    "allow-ou",
    "allow-fingerprint",
    "allow-spki",
)


def _files(options: Options) -> tuple[str, str, list[str], list[str]]:
    """
    The server certificate, key, client bundles and CRLs: as given, or those
    of the development PKI, which is made if it is not there yet.
    """
    if options["cert"]:
        return options["cert"], options["key"], options["client-certs"], options["crl"]
    pki = DevelopmentPKI(options["pki"])
    where = os.path.abspath(options["pki"])
    if pki.exists():
        log.info("using the development PKI in {where}", where=where)
    else:
        pki.init()
        log.info(
            "created a development PKI in {where}: ca.crt, server.crt (for"
            " localhost, 127.0.0.1, ::1), client.crt and their keys, crl.pem",
            where=where,
        )
    path = lambda name: str(pki.path(name))  # noqa: E731
    return path("server.crt"), path("server.key"), [path("ca.crt")], [path("crl.pem")]


def _connectCommand(options: Options, where: str) -> str:
    command = f"echo hello | mtlsd connect {where}"
    if options["pki"] != DEFAULT_PKI_DIR:
        command += f" --pki {options['pki']}"
    return command


def _checkBackend(description: str) -> None:
    """
    Refuse a backend that plaintext would reach across a network: only
    loopback addresses and UNIX sockets are allowed without
    C{--unsafe-backend}.
    """
    if re.fullmatch(
        r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+|localhost|[\w-]+(\.[\w-]+)+):[0-9]+", description
    ):
        host, _, port = description.rpartition(":")
        suggestion = f"tcp:{quoteStringArgument(host.strip('[]'))}:{port}"
        raise usage.UsageError(
            f"--forward {description} is not an endpoint description; did you mean {suggestion}?"
        )
    try:
        args, kwargs = _parse(description)
    except Exception as e:
        raise usage.UsageError(f"--forward {description}: {e}") from None
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return
    host = kwargs.get("host", args[1] if len(args) > 1 else "")
    try:
        local = kind in ("tcp", "tcp6") and ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = kind in ("tcp", "tcp6") and host == "localhost"
    if not local:
        raise usage.UsageError(
            f"--forward {description}: the backend is not on loopback or a UNIX socket, so"
            " plaintext would leave this host; give --unsafe-backend if that is intended."
        )


def _appFactory(options: Options, reactor: Any) -> IProtocolFactory:
    if options["forward"]:
        try:
            backend = clientFromString(reactor, options["forward"])
        except Exception as e:
            raise ConfigurationError(f"--forward {options['forward']}: {e}") from None
        version = options["proxy-protocol"]
        return RelayFactory(backend, headerMaker(version) if version else None)
    name = options["app"] or "echo"
    if name == "echo":
        echo = Factory.forProtocol(Echo)
        echo.noisy = False
        return echo
    _importAppModule(name)
    try:
        factory = namedAny(name)()
    except Exception as e:
        raise ConfigurationError(f"--app {name} cannot be loaded: {e}.") from None
    if not IProtocolFactory.providedBy(factory):
        raise ConfigurationError(f"--app {name} did not return an IProtocolFactory.")
    return factory


def _importAppModule(name: str) -> None:
    """
    Import the module of C{--app NAME}, so that a module that cannot be
    imported is named as such (L{namedAny} says only that C{NAME} "does not
    name an object").

    @raise ConfigurationError: if it cannot be imported.
    """
    module, _, attribute = name.rpartition(".")
    if not module:
        raise ConfigurationError(
            f"--app {name}: give the dotted name of a callable in a module (module.callable)."
        )
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.split(".")[0] == e.name.split(".")[0]:
            raise ConfigurationError(
                f"--app {name}: no module named {e.name} on the module path; twistd does not"
                f" look in the current folder: run it as PYTHONPATH=. twistd ..., or install"
                f" the module."
            ) from None
        raise ConfigurationError(
            f"--app {name}: module {module} cannot be imported: {e}."
        ) from None
    except Exception as e:
        raise ConfigurationError(
            f"--app {name}: module {module} cannot be imported: {e}."
        ) from None


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


def _descriptions(options: Options) -> list[str]:
    """
    The plain server endpoints to listen on: C{--listen}'s, or the one of
    C{--port} and C{--interface}.
    """
    if options["listen"]:
        return list(options["listen"])
    port = DEFAULT_PORT if options["port"] is None else options["port"]
    interface = options["interface"] or _allInterfaces()
    return [f"tcp:{port}:interface={quoteStringArgument(interface)}"]


def _endpoints(
    reactor: Any, options: Options, role: WorkerRole | None
) -> list[tuple[str, IStreamServerEndpoint]]:
    if role is not None:
        return role.endpoints(reactor, _descriptions(options))
    endpoints = []
    backlog = "" if options["listen"] else f":backlog={DEFAULT_BACKLOG}"
    for description in _descriptions(options):
        try:
            endpoints.append((description, serverFromString(reactor, description + backlog)))
        except IndexError:
            # Twisted's systemd: parser, with no matching inherited socket
            raise ConfigurationError(
                f"--listen {description}: no such socket was passed to this process"
                " (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES, as systemd sets them)."
            ) from None
        except Exception as e:
            raise ConfigurationError(f"--listen {description}: {e}") from None
    return endpoints


def _pause(port: IListeningPort) -> None:
    """
    Keep a listening socket open without accepting on it (the main process
    of C{--workers}: its workers accept).
    """
    port.stopReading()  # type: ignore[attr-defined]


class _ListeningService(Service):
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


def makeService(options: Options, reactor: IReactorCore | None = None) -> IService:
    """
    Build the mtlsd service from parsed options.  Bad files end the process
    with one line naming the problem.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    try:
        certificate, key, clientCertificates, crls = _files(options)

        passphrase = options["key-passphrase-file"]
        clientCAs = options["client-ca"]

        def load() -> ServerTLSSettings:
            return ServerTLSSettings.fromFiles(
                certificate,
                key,
                clientCertificates,
                crls,
                passphrase,
                clientCAs,
                crlCheckChain=options["crl-check-chain"],
                crlRequired=options["crl-required"],
                policy=policy,
                verifyDepth=options["verify-depth"],
                minimumTLSVersion=options["tls-min-version"],
            )

        policy = options.policy()
        settings = load()
        appFactory = _appFactory(options, reactor)
        role = WorkerRole.fromEnvironment()
        endpoints = _endpoints(reactor, options, role)
    except ConfigurationError as e:
        raise SystemExit(f"mtlsd: {e}") from None
    context = ServerContext(settings)
    service = _DaemonService(options, Metrics(lambda: context.settings), role)
    supervising = role is None and options["workers"] > 1
    TrustReloader(
        context,
        load,
        [
            certificate,
            *([key] if key else []),
            *([passphrase] if passphrase else []),
            *clientCertificates,
            *clientCAs,
            *crls,
        ],
        reactor,  # type: ignore[arg-type]
        options["reload-interval"],
        options["keep-live-sessions"],
    ).setServiceParent(service)
    _Drain(context, reactor, options["drain-timeout"]).setServiceParent(service)

    def onListening(port: IListeningPort) -> None:
        if supervising:
            _pause(port)
        if role is None and not options["cert"]:
            where = f"localhost:{port.getHost().port}" if not options["listen"] else "HOST:PORT"  # type: ignore[attr-defined]
            log.info("try: {command}", command=_connectCommand(options, where))

    limits = ConnectionLimits(
        handshakeTimeout=options["handshake-timeout"],
        idleTimeout=options["idle-timeout"],
        maxLifetime=options["max-conn-lifetime"],
        maxConnections=options["max-connections"],
        maxPerAddress=options["max-connections-per-ip"],
    )
    listeners = []
    for description, endpoint in endpoints:
        listener = _ListeningService(
            description,
            MtlsServerEndpoint(
                context, endpoint, limits, quietRejections=options["quiet"] is not None
            ),
            appFactory,
            onListening,
        )
        listener.setServiceParent(service)
        listeners.append(listener)
    pool: WorkerPool | None = None
    if supervising:
        pool = WorkerPool(
            reactor,
            options["workers"],
            options.arguments,
            lambda: [cast(IListeningPort, each.port) for each in listeners],
            globalLogPublisher,
        )
        pool.setServiceParent(service)

    def healthy() -> bool:
        return all(each.listening for each in listeners) and (pool is None or pool.allRunning)

    if role is not None:
        WatchMainProcess().setServiceParent(service)
    elif options["metrics"]:
        try:
            metricsEndpoint = serverFromString(reactor, options["metrics"])
        except Exception as e:
            raise SystemExit(f"mtlsd: --metrics {options['metrics']}: {e}") from None
        service.metricsService = _ListeningService(
            options["metrics"],
            metricsEndpoint,
            metricsSite(service.metrics, healthy),
        )
    if _daemonizing(options):
        # Bind before twistd daemonizes (its start-up runs in the daemon
        # after the fork, where a failure left the twistd command waiting
        # for ever): a port in use, or one this user may not bind, ends the
        # command with one line, before any pid file is written.  The
        # sockets are inherited by the daemon, as root's would be before
        # --uid/--gid.  In the foreground (-n, twist) the listeners bind at
        # start-up as Twisted's do, just before the reloader starts
        # answering SIGHUP.
        for listener in listeners:
            listener.bind()
        if service.metricsService is not None:
            service.metricsService.bind()
    return service


def _daemonizing(options: Options) -> bool:
    """
    Whether twistd will daemonize (fork into the background) to run them.
    """
    twistd = getattr(options, "parent", None)
    return twistd is not None and "nodaemon" in twistd and not twistd["nodaemon"]


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
        self.metricsService: _ListeningService | None = None

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

    def __init__(self, context: ServerContext, clock: Any, timeout: float) -> None:
        self._context = context
        self._clock = clock
        self._timeout = timeout

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if not self._context.sessions:
            return None
        log.info(
            "shutting down: waiting up to {timeout}s for {count} connections",
            mtlsdEvent="draining",
            timeout=self._timeout,
            count=len(self._context.sessions),
        )
        drained = self._context.whenDrained()

        def cutTheRest() -> None:
            count = len(self._context.sessions)
            log.info(
                "drain timeout: cutting {count} connections",
                mtlsdEvent="drain-timeout",
                count=count,
            )
            for session in list(self._context.sessions):
                session.cut("shutdown")

        timer = self._clock.callLater(self._timeout, cutTheRest)
        return drained.addBoth(lambda result: timer.active() and timer.cancel())
