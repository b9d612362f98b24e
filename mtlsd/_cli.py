# -*- test-case-name: mtlsd.test.test_cli -*-
"""
The C{mtlsd} command: C{pki}, C{inspect} and C{connect}.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any
from urllib.parse import urlsplit

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from ._address import formatAddress
from ._client import ClientTLSSettings
from ._errors import ConfigurationError
from ._files import loadCertificateAndKey, loadCRLs, parseCertificates, readFile
from ._inspect import describeCertificate, describeCRL
from ._ocsp import checkResponderURL
from ._pki import DEFAULT_PKI_DIR, DevelopmentPKI
from ._verify import tlsGroups

# The exit status of a command whose standard output was closed under it:
# what a shell reports for one killed by SIGPIPE, as cat is.
OUTPUT_CLOSED = 128 + 13


def parseHostPort(value: str) -> tuple[str, int]:
    """
    Split C{HOST:PORT} or C{[IPv6]:PORT}.

    @raise ValueError: if it is not of that form.
    """
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return host, int(port)


def _clientArguments(parser: argparse.ArgumentParser) -> None:
    """
    The TLS options of the client commands.
    """
    parser.add_argument("--cert", help="client certificate PEM (optionally with chain and key)")
    parser.add_argument("--key", help="client private key PEM (default: inside --cert)")
    parser.add_argument(
        "--key-passphrase-file",
        metavar="FILE",
        help="file whose first line is the passphrase of an encrypted key or PKCS#12 --cert",
    )
    parser.add_argument(
        "--ca", help="CA certificates, or the server's own certificate, to verify the server"
    )
    parser.add_argument(
        "--servername", help="name to verify on the server certificate (default: HOST)"
    )
    parser.add_argument(
        "--pki", default=DEFAULT_PKI_DIR, metavar="DIR", help="development PKI for defaults"
    )
    parser.add_argument(
        "--tls-min-version", choices=["1.2", "1.3"], default="1.2", help="oldest TLS version"
    )
    parser.add_argument(
        "--tls-groups",
        metavar="LIST",
        help="key-exchange groups offered, colon-separated (default Mozilla's)",
    )


class _CommandParser(argparse.ArgumentParser):
    """
    The parser of one subcommand, which reports an unknown option with its
    own usage: argparse leaves it to the top parser, whose usage does not
    say what the subcommand takes.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _version() -> str:
    try:
        return version("mtlsd")
    except PackageNotFoundError:  # pragma: no cover (run from a source tree)
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlsd", description="Mutual TLS: a development PKI, inspection, a client."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    pki = commands.add_parser("pki", help="make a development PKI and certificates")
    pkiCommands = pki.add_subparsers(
        dest="pkiCommand", required=True, metavar="init|issue|revoke|ocsp-index"
    )
    init = pkiCommands.add_parser(
        "init",
        help="create a development PKI",
        description="Create ca.crt, ca.key, server.crt/.key (for localhost, 127.0.0.1,"
        " ::1 and --server-name), client.crt/.key and an empty crl.pem in DIR."
        " Existing files are kept.",
    )
    init.add_argument("directory", nargs="?", default=DEFAULT_PKI_DIR, metavar="DIR")
    init.add_argument(
        "--server-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address for the server certificate (repeatable)",
    )
    init.add_argument(
        "--ocsp-url",
        metavar="URL",
        help="the OCSP responder the certificates issued from now on name; also writes"
        " ocsp.crt/ocsp.key (the responder's) and index.txt (see ocsp-index)",
    )
    issue = pkiCommands.add_parser(
        "issue",
        help="issue a client certificate",
        description="Write NAME.crt and NAME.key, signed by the PKI's CA.",
    )
    issue.add_argument("name", metavar="NAME")
    issue.add_argument("--pki", default=DEFAULT_PKI_DIR, metavar="DIR")
    issue.add_argument("--self-signed", action="store_true", help="make it self-signed")
    issue.add_argument("--force", action="store_true", help="replace an existing NAME")
    issue.add_argument("--days", type=int, default=365, help="days of validity")
    issue.add_argument("--dns", action="append", default=[], help="DNS name (repeatable)")
    issue.add_argument(
        "--uri", action="append", default=[], help="URI, e.g. a SPIFFE ID (repeatable)"
    )

    revoke = pkiCommands.add_parser(
        "revoke",
        help="revoke a certificate of the PKI",
        description="Add NAME.crt to the PKI's crl.pem; a daemon on this PKI picks it up"
        " at its next reload and cuts NAME's live connections.",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--pki", default=DEFAULT_PKI_DIR, metavar="DIR")
    ocspIndex = pkiCommands.add_parser(
        "ocsp-index",
        help="write index.txt for openssl ocsp",
        description="Write index.txt, the certificate database 'openssl ocsp -index' serves:"
        " every certificate of the PKI, revoked if crl.pem lists it (issue and revoke"
        " keep it up to date once 'pki init --ocsp-url' was run).",
    )
    ocspIndex.add_argument("--pki", default=DEFAULT_PKI_DIR, metavar="DIR")

    check = commands.add_parser(
        "check",
        help="validate a daemon's configuration file and describe its services",
        description="Read a twistd mtlsd --config FILE and every file it names, without"
        " starting anything: each service's listen address, certificate, trust and"
        " backend; exit 1 with one line naming the problem.",
    )
    check.add_argument("--config", required=True, metavar="FILE")

    inspect = commands.add_parser(
        "inspect",
        help="describe certificates, CRLs and PKCS#12 files",
        description="Describe every certificate and CRL in each file: PEM certificates"
        " and CRLs, a DER CRL, or a PKCS#12 file (its key is never shown).",
    )
    inspect.add_argument("files", nargs="+", metavar="FILE")
    inspect.add_argument(
        "--passphrase-file",
        "--key-passphrase-file",
        dest="passphrase_file",
        metavar="FILE",
        help="file whose first line is the password of the PKCS#12 files",
    )

    connect = commands.add_parser(
        "connect",
        help="talk to a mutual-TLS server",
        description="Send standard input to a mutual-TLS server and print its answer."
        " Without --cert/--key/--ca the development PKI's files are used.",
    )
    connect.add_argument("address", type=parseHostPort, metavar="HOST:PORT")
    _clientArguments(connect)
    connect.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the server's identity to standard error",
    )

    tunnel = commands.add_parser(
        "tunnel",
        help="carry local plaintext connections over mutual TLS",
        description="Accept plaintext connections on --listen and carry each to HOST:PORT"
        " over mutual TLS. Without --cert/--key/--ca the development PKI's files are used.",
    )
    tunnel.add_argument(
        "--listen",
        required=True,
        metavar="ENDPOINT",
        help="where to accept plaintext, e.g. tcp:15432:interface=127.0.0.1",
    )
    tunnel.add_argument("--to", required=True, type=parseHostPort, metavar="HOST:PORT")
    _clientArguments(tunnel)
    return parser


def _pki(args: argparse.Namespace, out: IO[str]) -> int:
    if args.pkiCommand == "init":
        pki = DevelopmentPKI(args.directory)
        verb = "kept the existing" if pki.exists() else "created a"
        if args.ocsp_url is not None:
            checkResponderURL(args.ocsp_url, "--ocsp-url")
        pki.init(args.server_name, args.ocsp_url)
        out.write(f"{verb} development PKI in {pki.directory.absolute()}\n")
        if args.ocsp_url is not None:
            if verb.startswith("kept"):
                out.write(
                    f"certificates issued from now on name {args.ocsp_url}; those issued before"
                    " name no responder (issue them again with 'mtlsd pki issue NAME --force')\n"
                )
            _ocspHint(pki, out)
        return 0
    pki = DevelopmentPKI(args.pki)
    if args.pkiCommand == "ocsp-index":
        if not pki.exists():
            raise ConfigurationError(f"no PKI in {args.pki}: run 'mtlsd pki init' first.")
        listed, revoked = pki.writeIndex()
        out.write(f"wrote {pki.path('index.txt')}: {listed} certificates, {revoked} revoked\n")
        _ocspHint(pki, out)
        return 0
    if args.pkiCommand == "revoke":
        crl = pki.revoke(args.name)
        count = f"{len(crl)} certificate{'' if len(crl) == 1 else 's'}"
        out.write(f"revoked {args.name}; {pki.path('crl.pem')} lists {count}\n")
        return 0
    if not args.self_signed and not pki.exists():
        raise ConfigurationError(f"no PKI in {args.pki}: run 'mtlsd pki init' first.")
    pki.issue(
        args.name,
        selfSigned=args.self_signed,
        days=args.days,
        dnsNames=args.dns,
        uris=args.uri,
        replace=args.force,
    )
    out.write(f"wrote {pki.path(args.name + '.crt')} and {pki.path(args.name + '.key')}\n")
    return 0


def _ocspHint(pki: DevelopmentPKI, out: IO[str]) -> None:
    """
    Say how to serve the PKI's OCSP answers with OpenSSL.
    """
    url = pki.ocspURL()
    port = urlsplit(url).port if url else None
    signer = "ocsp" if pki.path("ocsp.crt").exists() else "ca"
    d = pki.directory
    out.write(
        f"serve it: openssl ocsp -index {d / 'index.txt'} -CA {d / 'ca.crt'}"
        f" -rsigner {d / (signer + '.crt')} -rkey {d / (signer + '.key')}"
        f" -port {port or 8888} -nmin 5\n"
    )
    if url is None:
        out.write("(the certificates name no responder: run 'mtlsd pki init --ocsp-url URL')\n")


def _readForInspection(
    path: str, passphrasePath: str | None
) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList], str]:
    """
    Read what the daemon would read in C{path}: PEM certificates and CRLs,
    a DER CRL, or a PKCS#12 file.

    @return: the certificates, the CRLs, and a line to print first.
    @raise ConfigurationError: if the file is none of these.
    """
    data = readFile(path, "the")
    if b"-----BEGIN" in data:
        hasCertificates = b"CERTIFICATE-----" in data
        crls = loadCRLs(path) if b"X509 CRL-----" in data else []
        if not hasCertificates and not crls:
            key = " a private key (never shown) but" if b"PRIVATE KEY-----" in data else ""
            raise ConfigurationError(f"{path} holds{key} no PEM certificate or CRL.")
        return parseCertificates(data, path) if hasCertificates else [], crls, ""
    try:
        return [], loadCRLs(path), ""
    except ConfigurationError:
        pass
    try:
        loaded = loadCertificateAndKey(path, None, "inspected", passphrasePath)
    except ConfigurationError as e:
        if "is not a PKCS#12 file" not in str(e):
            raise
        raise ConfigurationError(
            f"{path} holds no certificate or CRL (PEM, or a DER CRL) and is not a PKCS#12 file."
        ) from None
    certificates = [loaded.certificate, *loaded.chain]
    return certificates, [], f"{path}: PKCS#12 with a private key (not shown) and certificates:\n"


def _inspect(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    status = 0
    for path in args.files:
        try:
            certificates, crls, header = _readForInspection(path, args.passphrase_file)
        except ConfigurationError as e:
            err.write(f"mtlsd inspect: {e}\n")
            status = 1
            continue
        out.write(header)
        for number, crl in enumerate(crls, 1):
            out.write(f"{path} CRL [{number}/{len(crls)}]\n")
            out.write("".join(line + "\n" for line in describeCRL(crl)))
        for number, certificate in enumerate(certificates, 1):
            out.write(f"{path} [{number}/{len(certificates)}]\n")
            try:
                lines = list(describeCertificate(certificate))
            except ValueError as e:
                err.write(f"mtlsd inspect: {path}: certificate {number} cannot be read: {e}\n")
                status = 1
                continue
            out.write("".join(line + "\n" for line in lines))
    return status


def _check(args: argparse.Namespace, out: IO[str]) -> int:
    """
    Validate a daemon's configuration file and describe each service.
    """
    from twisted.python import usage

    from ._listening import listenDescriptions
    from ._options import Options, serverConfiguration

    options = Options()
    try:
        options.parseOptions(["--config", args.config])
    except usage.UsageError as e:
        raise ConfigurationError(
            str(e).removeprefix("Parameter type enforcement failed: ")
        ) from None
    services: list[tuple[str | None, Options]] = [
        (each.name, each.options) for each in options.services
    ] or [(None, options)]
    lines: list[str] = []  # written once everything is valid
    for name, serviceOptions in services:
        where = "" if name is None else f"service {name!r}: "
        lines.append(f"{'the daemon' if name is None else 'service ' + name}:\n")
        lines.append(f"  listen: {', '.join(listenDescriptions(serviceOptions))}\n")
        names = next((each for each in options.services if each.name == name), None)
        if names is not None and (names.serverNames or names.default):
            lines.append(
                f"  server names: {', '.join(names.serverNames) or '(none)'}"
                f"{' (the default)' if names.default else ''}\n"
            )
        if not serviceOptions["cert"] and not DevelopmentPKI(serviceOptions["pki"]).exists():
            lines.append(f"  development PKI {serviceOptions['pki']} (made at the first start)\n")
        else:
            try:
                settings = serverConfiguration(serviceOptions, name).load()
            except ConfigurationError as e:
                raise ConfigurationError(f"{where}{e}") from None
            for certificate in [
                settings.certificate,
                *(c for c, _, _ in settings.moreCertificates),
            ]:
                lines.append(
                    f"  certificate: {certificate.subject.rfc4514_string()}, valid until"
                    f" {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z\n"
                )
            lines += [f"  trusts: {bundle}\n" for bundle in settings.bundles]
        backend = (
            f"HTTP to {serviceOptions['forward-http']}"
            if serviceOptions["forward-http"]
            else f"relay to {serviceOptions['forward']}"
            if serviceOptions["forward"]
            else f"application {serviceOptions['app'] or 'echo'}"
        )
        lines.append(f"  backend: {backend}\n")
    count = len(services)
    out.write("".join(lines))
    out.write(f"{args.config}: {count} service{'' if count == 1 else 's'}, valid\n")
    return 0


def _clientSettings(args: argparse.Namespace, err: IO[str]) -> ClientTLSSettings:
    """
    The client's files: as given, else the development PKI's.  Says on
    C{err} when no client certificate will be sent.
    """
    pki = DevelopmentPKI(args.pki)
    cert, key, ca = args.cert, args.key, args.ca
    if cert is None and key is None and pki.exists():
        cert, key = pki.path("client.crt"), pki.path("client.key")
    if ca is None:
        if not pki.exists():
            raise ConfigurationError(f"--ca is needed (there is no development PKI in {args.pki}).")
        ca = pki.path("ca.crt")
    groups = None if args.tls_groups is None else tlsGroups(args.tls_groups)
    settings = ClientTLSSettings.fromFiles(
        cert, key, ca, args.tls_min_version, args.key_passphrase_file, groups
    )
    if settings.certificate is None:
        err.write(
            f"mtlsd {args.command}: warning: no client certificate is sent (no --cert, and"
            f" no development PKI in {args.pki}); most mutual-TLS servers will refuse"
            " this connection.\n"
        )
        err.flush()
    return settings


def _connect(args: argparse.Namespace, err: IO[str]) -> int:
    from twisted.internet.task import react

    from ._connect import OutputClosed, relayFactory

    host, port = args.address
    settings = _clientSettings(args, err)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    status = 0

    async def main(reactor: Any) -> None:
        nonlocal status
        done: Deferred[None] = Deferred()
        endpoint = settings.endpoint(reactor, host, port, args.servername)
        try:
            await endpoint.connect(relayFactory(args.verbose, err, done))
            await done
        except OutputClosed:
            status = OUTPUT_CLOSED
        except Exception as e:
            err.write(f"mtlsd connect: {where}: {e}\n")
            status = 1

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return status


def _tunnel(args: argparse.Namespace, err: IO[str]) -> int:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from ._relay import RelayFactory

    host, port = args.to
    outbound = _clientSettings(args, err).endpoint(reactor, host, port, args.servername)
    try:
        endpoint = serverFromString(reactor, args.listen)
    except Exception as e:
        raise ConfigurationError(f"--listen {args.listen}: {e}") from None
    failed: list[str] = []

    def listening(listeningPort: IListeningPort) -> None:
        where = formatAddress(listeningPort.getHost())
        err.write(f"mtlsd tunnel: {where} -> {host}:{port} over mutual TLS\n")
        err.flush()
        # Only now: a tunnel that cannot listen prints its one line, not
        # the reactor's "Main loop terminated".
        globalLogBeginner.beginLoggingTo([textFileLogObserver(err)], redirectStandardIO=False)

    def cannotListen(failure: Failure) -> None:
        failed.append(failure.getErrorMessage())
        reactor.stop()

    # Listening can fail at once (a port in use): start only once the
    # reactor runs, so that reactor.stop() ends it.
    reactor.callWhenRunning(
        lambda: endpoint.listen(RelayFactory(outbound)).addCallbacks(listening, cannotListen)
    )
    reactor.run()
    if failed:
        raise ConfigurationError(f"cannot listen on {args.listen}: {failed[0]}")
    return 0


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, a usage error
        return e.code if isinstance(e.code, int) else 1
    try:
        if args.command == "pki":
            return _pki(args, sys.stdout)
        elif args.command == "inspect":
            return _inspect(args, sys.stdout, sys.stderr)
        elif args.command == "check":
            return _check(args, sys.stdout)
        elif args.command == "tunnel":
            return _tunnel(args, sys.stderr)
        else:
            return _connect(args, sys.stderr)
    except ConfigurationError as e:
        sys.stderr.write(f"mtlsd {args.command}: {e}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the C{mtlsd} command.
    """
    try:
        status = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of standard output has gone (mtlsd inspect ... | head):
        # end quietly as cat does.  The recipe of Python's documentation
        # (signal module, "Note on SIGPIPE"): nothing more may reach the
        # closed pipe, not even the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = OUTPUT_CLOSED
    raise SystemExit(status)
