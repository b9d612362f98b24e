# -*- test-case-name: mtlsd.test.test_tap -*-
"""
The options of C{twistd mtlsd}, their checks, the TOML file they may come
from, and the server configuration they describe.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import (  # _parse: Twisted's own reading of descriptions
    _parse,
    quoteStringArgument,
)
from twisted.logger import Logger
from twisted.python import usage

from ._build import ServerConfiguration
from ._config import configArguments, mergeArguments, repeatableOptions, serviceTables
from ._errors import ConfigurationError
from ._httpidentity import HTTPIdentity
from ._logging import FORMATS, jsonLinesObserver
from ._ocsp import DEFAULT_OCSP_TIMEOUT, OCSPSettings, checkResponderURL
from ._pki import DEFAULT_PKI_DIR, DevelopmentPKI
from ._policy import ALLOW_KINDS, AllowKind, AllowPolicy
from ._proxyheader import VERSIONS as PROXY_VERSIONS
from ._reload import DEFAULT_RELOAD_INTERVAL
from ._server import DEFAULT_HANDSHAKE_TIMEOUT
from ._services import ServiceOptions, parseServices
from ._settings import DEFAULT_VERIFY_DEPTH
from ._verify import (
    OPENSSL_VERSION,
    TLS_VERSIONS,
    lackingGroups,
    tlsGroups,
    tlsSignatureAlgorithms,
)

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
            "forward-http",
            None,
            None,
            "Forward each authenticated client's HTTP/1.1 requests to this plaintext backend"
            " (a client endpoint), with its certificate in Client-Cert headers (RFC 9440).",
        ],
        [
            "client-cert-header",
            None,
            None,
            "With --forward-http, xfcc: set Envoy's X-Forwarded-Client-Cert too"
            " (default rfc9440: Client-Cert and Client-Cert-Chain only).",
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
            "ocsp-responder",
            None,
            None,
            "With --ocsp, the responder URL for every client certificate (default: the one"
            " each names in its Authority Information Access).",
        ],
        [
            "ocsp-timeout",
            None,
            DEFAULT_OCSP_TIMEOUT,
            "With --ocsp, seconds to wait for the responder",
            _number("ocsp-timeout", float, 0.001),
        ],
        [
            "ocsp-cache-seconds",
            None,
            None,
            "With --ocsp, the longest an answer is cached (default: until its nextUpdate, or an"
            " hour without one)",
            _number("ocsp-cache-seconds", float, 0),
        ],
        [
            "tls-groups",
            None,
            None,
            "Key-exchange groups offered, colon-separated OpenSSL names"
            " (default Mozilla's: X25519MLKEM768:X25519:prime256v1:secp384r1).",
        ],
        [
            "tls-sigalgs",
            None,
            None,
            "Signature algorithms accepted from clients (and signed with), colon-separated"
            " OpenSSL names such as ECDSA+SHA256:rsa_pss_rsae_sha256 (default OpenSSL's).",
        ],
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
            "ocsp",
            None,
            "Check each client certificate with its CA's OCSP responder (soft-fail: a responder"
            " that does not answer admits the client, with a warning).",
        ],
        ["ocsp-check-chain", None, "With --ocsp, check the intermediates of the chain too."],
        [
            "ocsp-required",
            None,
            "With --ocsp, refuse clients whose status the responder does not confirm good.",
        ],
        [
            "unsafe-backend",
            None,
            "Allow a --forward or --forward-http backend that is not on loopback or a UNIX socket.",
        ],
    ]

    hasServices = False
    services: list[ServiceOptions] = []
    """
    The services of the configuration file's C{[[service]]} tables, each
    with its options (none: this daemon is one service, these options').
    """

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
            tables: list[dict[str, Any]] = []
            if path is not None:
                try:
                    fromFile = configArguments(path, self)
                    tables = serviceTables(path)
                except ConfigurationError as e:
                    raise usage.UsageError(str(e)) from None
                argv = mergeArguments(fromFile, rest, repeatableOptions(self), self)
                self["config"] = path
            self.hasServices = bool(tables)
            super().parseOptions(argv)
            if tables:
                assert path is not None
                self.services = parseServices(self, path, tables, fromFile, rest)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Under twistd or twist, which would print the whole usage on
            # standard output before the error: one line on standard error.
            # usage.Options words a coercer's error so; the error says it all.
            message = str(e).removeprefix("Parameter type enforcement failed: ")
            if "not recognized" in message:
                message += " (twistd mtlsd --help lists the options)"
            raise SystemExit(f"mtlsd: {message}") from None

    def opt_cert(self, path: str) -> None:
        """
        Server certificate PEM, optionally followed by its chain and key;
        again for a certificate of another key type (RSA and ECDSA: the
        client's signature algorithms pick).
        """
        self["cert"].append(path)

    opt_c = opt_cert

    def opt_key(self, path: str) -> None:
        """
        Server private key PEM (default: the key inside --cert); one per
        --cert when given.
        """
        self["key"].append(path)

    opt_k = opt_key

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

    def opt_identity_header(self, entry: str) -> None:
        """
        With --forward-http, NAME=FIELD: set header NAME to a field of the client's identity:
        cn, subject, issuer, serial, fingerprint, spki, uri, dns, email or not-after (repeatable).
        """
        self["identity-header"].append(entry)

    def opt_crl(self, path: str) -> None:
        """
        Certificate revocation list, PEM or DER (repeatable).
        """
        self["crl"].append(path)

    def policy(self) -> AllowPolicy:
        """
        The allow-list the C{--allow-*} options describe.

        @raise ConfigurationError: for a malformed entry.
        """
        return AllowPolicy(**{kind.attribute: self[kind.option] for kind in ALLOW_KINDS})

    def postOptions(self) -> None:
        modes = [f"--{name}" for name in ("app", "forward", "forward-http") if self[name]]
        if len(modes) > 1:
            raise usage.UsageError(f"{' and '.join(modes)} cannot be used together.")
        if (self["client-cert-header"] or self["identity-header"]) and not self["forward-http"]:
            raise usage.UsageError(
                "--client-cert-header and --identity-header go with --forward-http."
            )
        if self["forward-http"]:
            try:
                HTTPIdentity.fromOptions(self["client-cert-header"], self["identity-header"])
            except ConfigurationError as e:
                raise usage.UsageError(str(e)) from None
        if self["proxy-protocol"] and not self["forward"]:
            raise usage.UsageError("--proxy-protocol goes with --forward.")
        if self["proxy-protocol"] not in (None, *PROXY_VERSIONS):
            raise usage.UsageError(
                f"--proxy-protocol must be v1, v2 or v2-full, not {self['proxy-protocol']!r}."
            )
        for mode in ("forward", "forward-http"):
            if self[mode] and not self["unsafe-backend"]:
                _checkBackend(self[mode], mode)
        if self["log-format"] not in FORMATS:
            raise usage.UsageError(
                f"--log-format must be text or json, not {self['log-format']!r}."
            )
        twist = getattr(self, "parent", None)
        if self["log-format"] == "json" and twist is not None and "fileLogObserverFactory" in twist:
            # twist (unlike twistd) ignores the application's log observer
            # and writes with the one its options name: mtlsd's JSON lines.
            twist["fileLogObserverFactory"] = jsonLinesObserver
        if self.hasServices:
            return  # the rest is each service's (see mtlsd._services)
        if self["quiet"] not in (None, "handshake-errors"):
            raise usage.UsageError(f"--quiet takes handshake-errors, not {self['quiet']!r}.")
        if self["tls-min-version"] not in TLS_VERSIONS:
            raise usage.UsageError(
                f"--tls-min-version must be 1.2 or 1.3, not {self['tls-min-version']!r}."
            )
        try:
            tlsGroups(self["tls-groups"])
            if self["tls-sigalgs"] is not None:
                tlsSignatureAlgorithms(self["tls-sigalgs"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        ocspOptions = [
            f"--{name}"
            for name in (
                "ocsp-check-chain",
                "ocsp-required",
                "ocsp-responder",
                "ocsp-cache-seconds",
            )
            if self[name]
        ] + (["--ocsp-timeout"] if self["ocsp-timeout"] != DEFAULT_OCSP_TIMEOUT else [])
        if ocspOptions and not self["ocsp"]:
            verb = "goes" if len(ocspOptions) == 1 else "go"
            raise usage.UsageError(f"{', '.join(ocspOptions)} {verb} with --ocsp.")
        if self["ocsp"] and self["ocsp-timeout"] >= self["handshake-timeout"]:
            raise usage.UsageError(
                f"--ocsp-timeout {self['ocsp-timeout']:g} must be shorter than --handshake-timeout"
                f" {self['handshake-timeout']:g}: the client would be cut before OCSP gives up."
            )
        if self["ocsp-responder"]:
            try:
                checkResponderURL(self["ocsp-responder"])
            except ConfigurationError as e:
                raise usage.UsageError(str(e)) from None
        if self["listen"] and self["port"] is not None:
            raise usage.UsageError("--listen and --port cannot be used together.")
        if self["listen"] and self["interface"]:
            raise usage.UsageError("--interface goes with --port, not --listen.")
        if self["cert"] and self["key"] and len(self["key"]) != len(self["cert"]):
            raise usage.UsageError(
                f"--key is given {len(self['key'])} time{'s' * (len(self['key']) != 1)} for"
                f" {len(self['cert'])} --cert: give"
                " one --key per --cert, in the same order, or none (each key inside its"
                " certificate file)."
            )
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
    "cert",
    "key",
    "client-certs",
    "client-ca",
    "listen",
    "crl",
    "identity-header",
    *(kind.option for kind in ALLOW_KINDS),
)


def _appender(kind: AllowKind) -> Callable[[Options, str], None]:
    """
    The C{opt_} method of a repeatable allow-list option.
    """

    def append(self: Options, entry: str) -> None:
        self[kind.option].append(entry)

    append.__doc__ = kind.help
    return append


for _kind in ALLOW_KINDS:  # the --allow-* options
    setattr(Options, "opt_" + _kind.option.replace("-", "_"), _appender(_kind))


def _checkBackend(description: str, option: str = "forward") -> None:
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
            f"--{option} {description} is not an endpoint description; did you mean {suggestion}?"
        )
    try:
        args, kwargs = _parse(description)
    except Exception as e:
        raise usage.UsageError(f"--{option} {description}: {e}") from None
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
            f"--{option} {description}: the backend is not on loopback or a UNIX socket"
            " (tcp:127.0.0.1:PORT, unix:PATH), so plaintext would leave this host; give"
            " --unsafe-backend if that is intended."
        )


def _first(paths: list[str]) -> str | None:
    return paths[0] if paths else None


def _moreCertificates(options: Options) -> tuple[tuple[str, str | None], ...]:
    """
    The server certificates after the first, each with its key file.
    """
    keys = options["key"][1:] or [None] * (len(options["cert"]) - 1)
    return tuple(zip(options["cert"][1:], keys, strict=True))


def _trustFiles(options: Options) -> tuple[str, str | None, list[str], list[str]]:
    """
    The server certificate, key, client bundles and CRLs: as given, or those
    of the development PKI, which is made if it is not there yet.
    """
    if options["cert"]:
        return options["cert"][0], _first(options["key"]), options["client-certs"], options["crl"]
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


def serverConfiguration(options: Options, service: str | None = None) -> ServerConfiguration:
    """
    The server the options describe, on the development PKI when they give
    no TLS files (which is made if it is not there yet).

    @param service: the name of the daemon's service these options are of.

    @raise ConfigurationError: for a malformed allow-list entry.
    """
    certificate, key, clientCertificates, crls = _trustFiles(options)
    if options["tls-groups"] is None and lackingGroups():
        log.warn(
            "{openssl} lacks {groups} of Mozilla's TLS groups: not offered",
            openssl=OPENSSL_VERSION,
            groups=":".join(lackingGroups()),
        )
    if options["ocsp"]:
        log.info(
            "OCSP: client certificates{chain} checked with {responder}, {failing}; timeout"
            " {timeout:g}s",
            chain=" and their intermediates" if options["ocsp-check-chain"] else "",
            responder=options["ocsp-responder"] or "the responder each names",
            failing="refused if unconfirmed" if options["ocsp-required"] else "soft-fail",
            timeout=options["ocsp-timeout"],
        )
    return ServerConfiguration(
        certificate=certificate,
        key=key,
        moreCertificates=_moreCertificates(options) if options["cert"] else (),
        passphrase=options["key-passphrase-file"],
        clientCertificates=clientCertificates,
        clientCAs=options["client-ca"],
        crls=crls,
        crlCheckChain=options["crl-check-chain"],
        crlRequired=options["crl-required"],
        policy=options.policy(),
        verifyDepth=options["verify-depth"],
        minimumTLSVersion=options["tls-min-version"],
        groups=None if options["tls-groups"] is None else tlsGroups(options["tls-groups"]),
        signatureAlgorithms=options["tls-sigalgs"],
        handshakeTimeout=options["handshake-timeout"],
        idleTimeout=options["idle-timeout"],
        maxLifetime=options["max-conn-lifetime"],
        maxConnections=options["max-connections"],
        maxPerAddress=options["max-connections-per-ip"],
        reloadInterval=options["reload-interval"],
        keepLiveSessions=options["keep-live-sessions"],
        quietRejections=options["quiet"] is not None,
        ocsp=OCSPSettings(
            responder=options["ocsp-responder"],
            checkChain=options["ocsp-check-chain"],
            timeout=options["ocsp-timeout"],
            required=options["ocsp-required"],
            cacheSeconds=options["ocsp-cache-seconds"],
        )
        if options["ocsp"]
        else None,
        service=service,
    )
