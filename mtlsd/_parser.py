# -*- test-case-name: mtlsd.test.test_parser -*-
"""
The C{mtls:} endpoint strings, for C{serverFromString}, C{clientFromString}
and every twistd plugin that takes C{--listen}.  This module stays light:
the rest of mtlsd is imported only when a string is parsed.
"""

from __future__ import annotations

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
    "allowCN",
    "allowDNS",
    "allowURI",
    "allowIP",
    "allowOU",
    "allowFingerprint",
    "allowSPKI",
    "verifyDepth",
    "tlsMinVersion",
    "handshakeTimeout",
    "reloadInterval",
    "keepLiveSessions",
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
}


def _check(kind: str, given: dict[str, str], known: set[str], required: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"mtls: {kind} endpoint: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    missing = [key for key in required if key not in given]
    if missing:
        raise ValueError(f"mtls: {kind} endpoint: {missing[0]}= is required")


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
        raise ValueError(f"mtls: {key}={value!r} must be yes or no")
    return value in ("yes", "true", "1")


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

        @raise ValueError: for unknown options or unusable files, naming them.
        """
        args, kwargs = _strings(positional, keywords)
        from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString

        from ._context import ServerContext, ServerTLSSettings
        from ._errors import ConfigurationError
        from ._policy import AllowPolicy
        from ._reload import DEFAULT_RELOAD_INTERVAL, TrustReloader
        from ._server import DEFAULT_HANDSHAKE_TIMEOUT, ConnectionLimits, MtlsServerEndpoint

        _check("server", kwargs, _SERVER_KEYS, ("certKey",))
        if "clientCerts" not in kwargs and "clientCA" not in kwargs:
            raise ValueError("mtls: server endpoint: clientCerts= is required (or clientCA=)")
        if "endpoint" in kwargs:
            if args or "interface" in kwargs or "backlog" in kwargs:
                raise ValueError("mtls: endpoint= replaces the port, interface and backlog")
            plain = serverFromString(reactor, kwargs["endpoint"])
        elif len(args) == 1:
            plain = TCP4ServerEndpoint(
                reactor, int(args[0]), int(kwargs.get("backlog", 50)), kwargs.get("interface", "")
            )
        else:
            raise ValueError("mtls: server endpoint needs a port (mtls:8443:...) or endpoint=")
        certificate, key = kwargs["certKey"], kwargs.get("privateKey")
        passphrase = kwargs.get("keyPassphraseFile")
        clientCertificates, crls = _list(kwargs.get("clientCerts")), _list(kwargs.get("crl"))
        clientCAs = _list(kwargs.get("clientCA"))
        try:
            policy = AllowPolicy(
                commonNames=_list(kwargs.get("allowCN")),
                dnsNames=_list(kwargs.get("allowDNS")),
                uris=_list(kwargs.get("allowURI")),
                ipAddresses=_list(kwargs.get("allowIP")),
                organizationalUnits=_list(kwargs.get("allowOU")),
                fingerprints=_list(kwargs.get("allowFingerprint")),
                spkiFingerprints=_list(kwargs.get("allowSPKI")),
            )
            options: dict[str, Any] = {
                "crlCheckChain": _flag(kwargs, "crlCheckChain"),
                "crlRequired": _flag(kwargs, "crlRequired"),
                "policy": policy,
                "verifyDepth": int(kwargs.get("verifyDepth", 4)),
                "minimumTLSVersion": kwargs.get("tlsMinVersion", "1.2"),
            }

            def load() -> ServerTLSSettings:
                return ServerTLSSettings.fromFiles(
                    certificate, key, clientCertificates, crls, passphrase, clientCAs, **options
                )

            context = ServerContext(load())
        except ConfigurationError as e:
            raise ValueError(f"mtls: {e}") from None
        reloader = TrustReloader(
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
            reactor,
            float(kwargs.get("reloadInterval", DEFAULT_RELOAD_INTERVAL)),
            _flag(kwargs, "keepLiveSessions"),
        )
        return MtlsServerEndpoint(
            context,
            plain,
            ConnectionLimits(
                handshakeTimeout=float(kwargs.get("handshakeTimeout", DEFAULT_HANDSHAKE_TIMEOUT))
            ),
            reloader=reloader,
        )


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class MtlsClientParser:
    """
    C{mtls:host=HOST:port=PORT:certKey=client.pem[:privateKey=...]
    :caCerts=ca.pem[:servername=NAME][:tlsMinVersion=1.3]}: connect with
    mutual TLS, verifying the server's chain and name.
    """

    prefix = "mtls"

    def parseStreamClient(
        self, reactor: Any, *positional: object, **keywords: object
    ) -> IStreamClientEndpoint:
        """
        Make the endpoint a C{mtls:} client string describes.

        @raise ValueError: for unknown options or unusable files, naming them.
        """
        args, kwargs = _strings(positional, keywords)
        from ._client import ClientTLSSettings
        from ._errors import ConfigurationError

        if args:
            raise ValueError("mtls: client endpoint takes host= and port=, not positional values")
        _check("client", kwargs, _CLIENT_KEYS, ("host", "port", "caCerts"))
        try:
            settings = ClientTLSSettings.fromFiles(
                kwargs.get("certKey"),
                kwargs.get("privateKey"),
                kwargs["caCerts"],
                kwargs.get("tlsMinVersion", "1.2"),
                kwargs.get("keyPassphraseFile"),
            )
        except ConfigurationError as e:
            raise ValueError(f"mtls: {e}") from None
        return settings.endpoint(
            reactor, kwargs["host"], int(kwargs["port"]), kwargs.get("servername")
        )
