# -*- test-case-name: mtlsd.test.test_services -*-
"""
Many services in one daemon: the C{[[service]]} tables of the configuration
file, each read as the options of a daemon of its own.  The file's top-level
keys are defaults every service inherits (a service's own value, or list,
replaces them); the command line applies to every service.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from twisted.python import usage

from ._config import givenOptions, mergeArguments, repeatableOptions, tableArguments
from ._errors import ConfigurationError

DAEMON_WIDE = ("workers", "metrics", "log-format", "drain-timeout")
"""
Options of the whole daemon: set at the top level only.
"""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@frozen
class ServiceOptions:
    """
    One service of the daemon.

    @ivar name: its name, in its log events and metrics.
    @ivar options: its options, parsed and checked as a daemon's.
    """

    name: str
    options: Any


def parseServices(
    daemon: usage.Options,
    path: str,
    tables: Sequence[dict[str, Any]],
    fileArguments: list[str],
    commandLine: list[str],
) -> list[ServiceOptions]:
    """
    Parse each C{[[service]]} table of the file at C{path} into options of
    the daemon's class.

    @param daemon: the daemon's options (their class is each service's).
    @param fileArguments: the arguments of the file's top level.
    @param commandLine: the command line, without C{--config}.
    @raise usage.UsageError: naming the file and the service, for a
        missing, bad or repeated name, a key that is not an option or that
        applies to the whole daemon, a bad value, or two services on one
        address.
    """
    where = f"config file {path}"
    addresses = frozenset({"port", "listen", "interface"})
    given = givenOptions(commandLine, addresses, daemon) & addresses
    if given:
        names = ", ".join(f"--{name}" for name in sorted(given))
        raise usage.UsageError(
            f"{names} cannot be used with the [[service]] tables of {path}: each service"
            " gives its own listen (or port)."
        )
    repeatable = repeatableOptions(daemon)
    services: list[ServiceOptions] = []
    for number, table in enumerate(tables, 1):
        table = dict(table)
        name = table.pop("name", None)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise usage.UsageError(
                f"{where}: service {number} needs a name (letters, digits, '.', '_', '-'),"
                f" not {name!r}."
            )
        if name in [service.name for service in services]:
            raise usage.UsageError(f"{where}: two services are named {name!r}.")
        here = f"{where}, service {name!r}"
        for key in ("server-names", "default"):
            if key in table:
                raise usage.UsageError(
                    f"{here}: {key} (choosing a service by the client's server name) is not"
                    " supported yet; give each service a listen address of its own."
                )
        for key in DAEMON_WIDE:
            if key in table:
                raise usage.UsageError(
                    f"{here}: {key} applies to the whole daemon; set it at the top level."
                )
        try:
            own = tableArguments(table, daemon, here)
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        arguments = mergeArguments(
            mergeArguments(fileArguments, own, repeatable, daemon), commandLine, repeatable, daemon
        )
        options = type(daemon)()
        try:
            usage.Options.parseOptions(options, arguments)
        except usage.UsageError as e:
            message = str(e).removeprefix("Parameter type enforcement failed: ")
            raise usage.UsageError(f"{here}: {message}") from None
        services.append(ServiceOptions(name, options))
    _checkAddresses(services, where)
    return services


def _checkAddresses(services: list[ServiceOptions], where: str) -> None:
    """
    Refuse two services listening on the same address.
    """
    from ._listening import listenDescriptions  # it imports the options, which import this

    seen: dict[str, str] = {}
    for service in services:
        for description in listenDescriptions(service.options):
            if re.match(r"tcp6?:0(:|$)", description):
                continue  # any free port: never the same
            if description in seen:
                raise usage.UsageError(
                    f"{where}: services {seen[description]!r} and {service.name!r} both listen"
                    f" on {description}; give each its own."
                )
            seen[description] = service.name
