# -*- test-case-name: mtlsd.test.test_parser -*-
"""
The C{mtls:} endpoint strings, for C{serverFromString}, C{clientFromString}
and every twistd plugin that takes C{--listen}.  This module stays light:
the rest of mtlsd is imported only when a string is parsed.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.interfaces import (
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

_SERVER_KEYS = {
    "certKey",
    "privateKey",
    "keyPassphraseFile",
    "clientCerts",
    "clientCA",
    "crl",
    "crlCheckChain",
    "crlRequired",
    "verifyDepth",
    "tlsMinVersion",
    "tlsGroups",
    "tlsSigalgs",
    "handshakeTimeout",
    "reloadInterval",
    "keepLiveSessions",
    "ocsp",
    "ocspResponder",
    "ocspCheckChain",
    "ocspRequired",
    "ocspTimeout",
    "ocspCacheSeconds",
    "interface",
    "backlog",
    "endpoint",
}
_CLIENT_KEYS = {
    "host",
    "port",
    "certKey",
    "privateKey",
    "keyPassphraseFile",
    "caCerts",
    "servername",
    "tlsMinVersion",
    "tlsGroups",
}


class DescriptionError(ValueError, SystemExit):
    """
    A bad C{mtls:} description, in one sentence that starts with C{mtls:}.

    It is a L{ValueError}, what Twisted's endpoint parsers raise, for the
    programs that catch one (C{except ValueError}, C{except Exception}, a
    Deferred's errback all do).  It is also a L{SystemExit}, for where none
    does: C{twistd web --listen mtls:...} parses the description in its
    C{makeService}, where nothing catches, so a plain L{ValueError} prints
    a traceback; this one ends the program with its sentence on stderr and
    status 1, as C{twistd mtlsd} does for a bad file.
    """

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.code = message  # what Python prints when it exits for it


def _check(kind: str, given: dict[str, str], known: set[str], required: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise DescriptionError(
            f"mtls: {kind} endpoint: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    missing = [key for key in required if key not in given]
    if missing:
        raise DescriptionError(f"mtls: {kind} endpoint: {missing[0]}= is required")


def _strings(
    positional: tuple[object, ...], keywords: dict[str, object]
) -> tuple[list[str], dict[str, str]]:
    """
    The arguments of a parsed description, which are all text.
    """
    return [str(a) for a in positional], {k: str(v) for k, v in keywords.items()}


def _list(value: str | None) -> list[str]:
    """
    A comma-separated list (file names, allow-list entries).
    """
    return [item for item in (value or "").split(",") if item]


def _flag(kwargs: dict[str, str], key: str) -> bool:
    value = kwargs.get(key, "no").lower()
    if value not in ("yes", "true", "1", "no", "false", "0"):
        raise DescriptionError(f"mtls: {key}={value!r} must be yes or no")
    return value in ("yes", "true", "1")


def _whole(key: str, value: str, minimum: int, maximum: int | None = None) -> int:
    """
    A whole number in a description, or one line naming the key and value.
    """
    try:
        number = int(value)
    except ValueError:
        raise DescriptionError(f"mtls: {key}={value!r} is not a whole number") from None
    if maximum is not None and not minimum <= number <= maximum:
        raise DescriptionError(f"mtls: {key}={value!r} must be from {minimum} to {maximum}")
    if number < minimum:
        raise DescriptionError(f"mtls: {key}={value!r} must be at least {minimum}")
    return number


def _seconds(key: str, value: str, zero: str | None = None) -> float:
    """
    A duration in a description (0 allowed, meaning C{zero}, if given), or
    one line naming the key and value.
    """
    try:
        number = float(value)
    except ValueError:
        raise DescriptionError(f"mtls: {key}={value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and zero is None):
        wanted = f"0 ({zero}) or more" if zero is not None else "more than 0"
        raise DescriptionError(f"mtls: {key}={value!r} must be {wanted} seconds")
    return number


def _tlsVersion(kwargs: dict[str, str]) -> str:
    value = kwargs.get("tlsMinVersion", "1.2")
    if value not in ("1.2", "1.3"):
        raise DescriptionError(f"mtls: tlsMinVersion={value!r} must be 1.2 or 1.3")
    return value


def _groups(kwargs: dict[str, str]) -> tuple[str, ...] | None:
    from ._verify import tlsGroups

    value = kwargs.get("tlsGroups")
    return None if value is None else tlsGroups(value, "tlsGroups=")


def _sigalgs(kwargs: dict[str, str]) -> str | None:
    from ._verify import tlsSignatureAlgorithms

    value = kwargs.get("tlsSigalgs")
    return None if value is None else tlsSignatureAlgorithms(value, "tlsSigalgs=")


def _ocsp(kwargs: dict[str, str]) -> Any:
    """
    The OCSP settings of C{ocsp=yes} and its companions, or L{None}.
    """
    from ._ocsp import DEFAULT_OCSP_TIMEOUT, OCSPSettings, checkResponderURL

    companions = sorted(key for key in kwargs if key.startswith("ocsp") and key != "ocsp")
    if not _flag(kwargs, "ocsp"):
        if companions:
            raise DescriptionError(f"mtls: {companions[0]}= goes with ocsp=yes")
        return None
    responder = kwargs.get("ocspResponder")
    cacheSeconds = kwargs.get("ocspCacheSeconds")
    return OCSPSettings(
        responder=None if responder is None else checkResponderURL(responder, "ocspResponder="),
        checkChain=_flag(kwargs, "ocspCheckChain"),
        required=_flag(kwargs, "ocspRequired"),
        timeout=_seconds("ocspTimeout", kwargs.get("ocspTimeout", str(DEFAULT_OCSP_TIMEOUT))),
        cacheSeconds=None
        if cacheSeconds is None
        else _seconds("ocspCacheSeconds", cacheSeconds, zero="no cache"),
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MtlsServerParser:
    """
    C{mtls:PORT:certKey=server.pem:clientCerts=clients.pem[:privateKey=...]
    [:interface=...][:crl=a.crl,b.crl][:allowCN=...]...}, or with
    C{endpoint=} (an escaped plain description such as
    C{haproxy\\:tcp\\:8443}) instead of PORT, to put mutual TLS on any stream
    endpoint.  Lists are comma-separated.  Trust is reloaded from the files
    as the daemon does (C{reloadInterval}, default 2 s, and SIGHUP).
    """

    prefix = "mtls"

    def parseStreamServer(
        self, reactor: Any, *positional: object, **keywords: object
    ) -> IStreamServerEndpoint:
        """
        Make the endpoint a C{mtls:} server string describes.

        @raise DescriptionError: (a L{ValueError}) for unknown options, bad
            values or unusable files, naming them.
        """
        args, kwargs = _strings(positional, keywords)
        from ._errors import ConfigurationError

        try:
            return self._parse(reactor, args, kwargs)
        except ConfigurationError as e:
            raise DescriptionError(f"mtls: {e}") from None

    def _parse(
        self, reactor: Any, args: list[str], kwargs: dict[str, str]
    ) -> IStreamServerEndpoint:
        from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString

        from ._build import MtlsServer, ServerConfiguration
        from ._policy import ALLOW_KINDS, AllowPolicy
        from ._reload import DEFAULT_RELOAD_INTERVAL
        from ._server import DEFAULT_BACKLOG, DEFAULT_HANDSHAKE_TIMEOUT
        from ._settings import DEFAULT_VERIFY_DEPTH

        _check("server", kwargs, _SERVER_KEYS | {kind.key for kind in ALLOW_KINDS}, ("certKey",))
        if "clientCerts" not in kwargs and "clientCA" not in kwargs:
            raise DescriptionError("mtls: server endpoint: clientCerts= is required (or clientCA=)")
        # Every value is checked before any file is read: a mistake is named
        # at once, whatever else is wrong.
        configuration = ServerConfiguration(
            certificate=kwargs["certKey"],
            key=kwargs.get("privateKey"),
            passphrase=kwargs.get("keyPassphraseFile"),
            clientCertificates=_list(kwargs.get("clientCerts")),
            clientCAs=_list(kwargs.get("clientCA")),
            crls=_list(kwargs.get("crl")),
            crlCheckChain=_flag(kwargs, "crlCheckChain"),
            crlRequired=_flag(kwargs, "crlRequired"),
            policy=AllowPolicy(
                **{kind.attribute: _list(kwargs.get(kind.key)) for kind in ALLOW_KINDS}
            ),
            verifyDepth=_whole(
                "verifyDepth", kwargs.get("verifyDepth", str(DEFAULT_VERIFY_DEPTH)), 1
            ),
            minimumTLSVersion=_tlsVersion(kwargs),
            groups=_groups(kwargs),
            signatureAlgorithms=_sigalgs(kwargs),
            handshakeTimeout=_seconds(
                "handshakeTimeout", kwargs.get("handshakeTimeout", str(DEFAULT_HANDSHAKE_TIMEOUT))
            ),
            reloadInterval=_seconds(
                "reloadInterval",
                kwargs.get("reloadInterval", str(DEFAULT_RELOAD_INTERVAL)),
                zero="only on SIGHUP",
            ),
            keepLiveSessions=_flag(kwargs, "keepLiveSessions"),
            ocsp=_ocsp(kwargs),
        )
        if configuration.ocsp and configuration.ocsp.timeout >= configuration.handshakeTimeout:
            raise DescriptionError(
                f"mtls: ocspTimeout={configuration.ocsp.timeout:g} must be shorter than"
                f" handshakeTimeout={configuration.handshakeTimeout:g}"
            )
        plain: IStreamServerEndpoint
        if "endpoint" in kwargs:
            if args or "interface" in kwargs or "backlog" in kwargs:
                raise DescriptionError("mtls: endpoint= replaces the port, interface and backlog")
            try:
                plain = serverFromString(reactor, kwargs["endpoint"])
            except Exception as e:
                raise DescriptionError(f"mtls: endpoint={kwargs['endpoint']!r}: {e}") from None
        elif len(args) == 1:
            plain = TCP4ServerEndpoint(
                reactor,
                _whole("port", args[0], 0, 65535),
                # The daemon's, not Twisted's 50 (too few for a burst).
                _whole("backlog", kwargs.get("backlog", str(DEFAULT_BACKLOG)), 1),
                kwargs.get("interface", ""),
            )
        else:
            raise DescriptionError(
                "mtls: server endpoint needs a port (mtls:8443:...) or endpoint="
            )
        return MtlsServer(configuration, reactor).endpoint(plain)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class MtlsClientParser:
    """
    C{mtls:host=HOST:port=PORT:certKey=client.pem[:privateKey=...]
    :caCerts=ca.pem[:servername=NAME][:tlsMinVersion=1.3][:tlsGroups=...]}: connect with
    mutual TLS, verifying the server's chain and name.
    """

    prefix = "mtls"

    def parseStreamClient(
        self, reactor: Any, *positional: object, **keywords: object
    ) -> IStreamClientEndpoint:
        """
        Make the endpoint a C{mtls:} client string describes.

        @raise DescriptionError: (a L{ValueError}) for unknown options, bad
            values or unusable files, naming them.
        """
        args, kwargs = _strings(positional, keywords)
        from ._client import ClientTLSSettings
        from ._errors import ConfigurationError

        if args:
            raise DescriptionError(
                "mtls: client endpoint takes host= and port=, not positional values"
            )
        _check("client", kwargs, _CLIENT_KEYS, ("host", "port", "caCerts"))
        port = _whole("port", kwargs["port"], 1, 65535)
        try:
            settings = ClientTLSSettings.fromFiles(
                kwargs.get("certKey"),
                kwargs.get("privateKey"),
                kwargs["caCerts"],
                _tlsVersion(kwargs),
                kwargs.get("keyPassphraseFile"),
                _groups(kwargs),
            )
        except ConfigurationError as e:
            raise DescriptionError(f"mtls: {e}") from None
        return settings.endpoint(reactor, kwargs["host"], port, kwargs.get("servername"))
