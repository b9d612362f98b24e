# -*- test-case-name: mtlsd.test.test_tap -*-
"""
The application the daemon runs for each admitted client: the echo, the
user's own factory (C{--app}), the relay to a backend (C{--forward}), or
HTTP forwarding with the client's identity in headers (C{--forward-http}).
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.internet.endpoints import _parse, clientFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.protocols.wire import Echo
from twisted.python.reflect import namedAny

from ._errors import ConfigurationError
from ._http import HTTPForwardFactory
from ._httpidentity import HTTPIdentity
from ._proxyheader import headerMaker
from ._relay import RelayFactory


def appFactory(options: Any, reactor: Any, service: str | None = None) -> IProtocolFactory:
    """
    @param options: the daemon's options (C{app}, C{forward},
        C{proxy-protocol}).
    @param service: the daemon's service it serves, named in the events of
        the relays and HTTP forwarding.
    @return: the application's factory.
    @raise ConfigurationError: for an app that cannot be loaded or a
        backend that cannot be described.
    """
    if options["forward-http"]:
        description = options["forward-http"]
        try:
            backend = clientFromString(reactor, description)
        except Exception as e:
            raise ConfigurationError(f"--forward-http {description}: {e}") from None
        identity = HTTPIdentity.fromOptions(
            options["client-cert-header"], options["identity-header"]
        )
        return HTTPForwardFactory(backend, identity, _hostOf(description), reactor, service)
    if options["forward"]:
        try:
            backend = clientFromString(reactor, options["forward"])
        except Exception as e:
            raise ConfigurationError(f"--forward {options['forward']}: {e}") from None
        version = options["proxy-protocol"]
        return RelayFactory(backend, headerMaker(version) if version else None, service)
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


def _hostOf(description: str) -> bytes:
    """
    The C{Host} of a backend endpoint (C{127.0.0.1:8080}; C{localhost} for a
    UNIX socket), for the requests of clients that send none (HTTP/1.0).
    """
    args, kwargs = _parse(description)
    host = kwargs.get("host", args[1] if len(args) > 1 else "")
    port = kwargs.get("port", args[2] if len(args) > 2 else "")
    if not host or not args or args[0].lower() not in ("tcp", "tcp6", "tls"):
        return b"localhost"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}".encode("idna") if port else host.encode("idna")


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
