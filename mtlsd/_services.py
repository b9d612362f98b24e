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
    @ivar serverNames: the names (C{*.} wildcards allowed) a client asks
        for, with SNI, to reach this service among those sharing its
        address.
    @ivar default: it serves the clients of its address whose server name
        names no service (or who send none).
    """

    name: str
    options: Any
    serverNames: tuple[str, ...] = ()
    default: bool = False

    def serves(self, serverName: str) -> bool:
        """
        @return: whether C{serverName} is one of this service's names.
        """
        name = serverName.lower().rstrip(".")
        for pattern in self.serverNames:
            if pattern.startswith("*."):
                head, _, rest = name.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


# Settings of the TLS connection that OpenSSL fixes when it accepts, before
# the client's server name is known: services sharing an address must agree.
_SHARED = ("tls-min-version", "tls-groups", "verify-depth", "handshake-timeout")


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
            found = "has none" if name is None else f"has {name!r}"
            raise usage.UsageError(
                f"{where}: service {number} needs a name of letters, digits, '.', '_' and '-'"
                f' (name = "api"); it {found}.'
            )
        if name in [service.name for service in services]:
            raise usage.UsageError(f"{where}: two services are named {name!r}.")
        here = f"{where}, service {name!r}"
        serverNames = _serverNames(table.pop("server-names", []), here)
        default = table.pop("default", False)
        if not isinstance(default, bool):
            raise usage.UsageError(f"{here}: default takes true or false.")
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
        services.append(ServiceOptions(name, options, serverNames, default))
    _checkAddresses(services, where)
    return services


def _serverNames(value: object, where: str) -> tuple[str, ...]:
    from ._pki import checkName  # DNS names as the PKI checks them

    given = value if isinstance(value, list) else [value]
    names = [name for name in given if isinstance(name, str)]
    if len(names) != len(given):
        raise usage.UsageError(f"{where}: server-names takes DNS names.")
    for name in names:
        try:
            checkName(name, "server-names")
        except ConfigurationError as e:
            raise usage.UsageError(f"{where}: {e}") from None
    return tuple(name.lower().rstrip(".") for name in names)


def sharedAddresses(services: Sequence[ServiceOptions]) -> list[list[ServiceOptions]]:
    """
    The services grouped by the addresses they listen on, in order: one
    group per listener set (services sharing one choose by server name).
    """
    from ._listening import listenDescriptions  # it imports the options, which import this

    groups: dict[tuple[str, ...], list[ServiceOptions]] = {}
    for service in services:
        descriptions = tuple(listenDescriptions(service.options))
        if any(re.match(r"tcp6?:0(:|$)", d) for d in descriptions):
            descriptions += (f"(any port, {service.name})",)  # never the same
        groups.setdefault(descriptions, []).append(service)
    return list(groups.values())


def _checkAddresses(services: list[ServiceOptions], where: str) -> None:
    """
    Refuse two services on one address unless the client's server name
    chooses between them: each names its server names (or is the default,
    one per address), no name twice, and they agree on what OpenSSL fixes
    before the name is known.  Two services may not share only some of
    their addresses.
    """
    groups = sharedAddresses(services)
    for number, group in enumerate(groups):
        mine = set(_fixedDescriptions(group[0]))
        for other in [g[0] for g in groups[number + 1 :]]:
            common = mine & set(_fixedDescriptions(other))
            if common:
                raise usage.UsageError(
                    f"{where}: services {group[0].name!r} and {other.name!r} share"
                    f" {sorted(common)[0]} but not all their addresses; give them the same"
                    " listen, or none in common."
                )
        if len(group) > 1:
            _checkShared(group, where)


def _fixedDescriptions(service: ServiceOptions) -> list[str]:
    from ._listening import listenDescriptions  # it imports the options, which import this

    return [d for d in listenDescriptions(service.options) if not re.match(r"tcp6?:0(:|$)", d)]


def _checkShared(group: list[ServiceOptions], where: str) -> None:
    """
    Check the services of one address, chosen by server name.
    """
    first = group[0]
    address = _fixedDescriptions(first)[0]
    for service in group:
        if not service.serverNames and not service.default:
            other = group[1] if service is first else service
            raise usage.UsageError(
                f"{where}: services {first.name!r} and {other.name!r} both listen on"
                f" {address}: give each server-names (the names clients ask for), or each"
                " its own address."
            )
        for key in _SHARED:
            if service.options[key] != first.options[key]:
                raise usage.UsageError(
                    f"{where}: services {first.name!r} and {service.name!r} share {address},"
                    f" so they must agree on {key} (OpenSSL settles it before the server"
                    " name is known)."
                )
    defaults = [s.name for s in group if s.default]
    if len(defaults) > 1:
        raise usage.UsageError(
            f"{where}: services {defaults[0]!r} and {defaults[1]!r} are both the default"
            f" of {address}."
        )
    owner: dict[str, str] = {}
    for service in group:
        for name in service.serverNames:
            if name in owner:
                raise usage.UsageError(
                    f"{where}: server name {name} is in the server-names of both services"
                    f" {owner[name]!r} and {service.name!r}."
                )
            owner[name] = service.name
