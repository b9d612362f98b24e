# -*- test-case-name: mtlsd.test.test_config -*-
"""
Configuration files: C{--config FILE} reads a TOML file whose keys are the
long option names of a L{usage.Options} class, without C{--}::

    port = 8443
    client-certs = ["/etc/mtlsd/clients.pem", "/etc/mtlsd/partners.pem"]
    crl-required = true

L{configArguments} turns such a file into command-line arguments
(C{["--port", "8443", "--client-certs", ...]}), and L{mergeArguments} puts
them in front of the real command line, so that the options class parses
both, its own way, and the command line wins:

    - a parameter (C{port}) keeps the last value C{usage.Options} sees:
      the command line's;
    - a repeatable option (C{client-certs}) given on the command line
      replaces the file's list instead of adding to it;
    - a flag (C{crl-required}) set in the file cannot be switched off from
      the command line, as flags have no C{--no-} form: take it out of the
      file instead.

The known keys come from the options class itself, so a new option can be
set in a file as soon as it exists.
"""

from __future__ import annotations

import datetime
import difflib
import getopt
import sys
from collections.abc import Iterable
from typing import Any

from twisted.python import reflect, usage

from ._errors import ConfigurationError
from ._files import readFile

_FORBIDDEN = frozenset({"config", "help", "version"})
"""
Long options that a configuration file cannot set: C{config} (a file does
not name another) and C{help}/C{version}, which print and exit.
"""


def configArguments(path: str, options: usage.Options) -> list[str]:
    """
    Read the TOML configuration file at C{path} and turn it into command-line
    arguments for C{options}, in the file's order.

    Every key is a long option name of C{options} without C{--}:

        - a flag takes C{true} (giving C{--flag}) or C{false} (giving
          nothing);
        - a parameter, or an option method taking an argument, takes a
          string or a number (C{--name value});
        - a repeatable option (see L{repeatableOptions}) takes an array of
          strings or numbers, or one of them (C{--name value} for each).

    @param path: the file name.
    @param options: an instance of the options class the arguments are for;
        only its set of options is used, not its values.
    @return: the arguments, with each option's value as a separate item
        (C{["--port", "8443", "--crl-required"]}).
    @raise ConfigurationError: if the file cannot be read, is not valid
        TOML, or has a key that is not an option, a forbidden one
        (C{config}, C{help}, C{version}) or a value of the wrong type; the
        message is one sentence naming the file.
    """
    settings = _load(path)
    settings.pop(SERVICES, None)  # see serviceTables
    return tableArguments(settings, options, f"config file {path}")


SERVICES = "service"
"""
The key of the file's C{[[service]]} tables: one service each.
"""


def serviceTables(path: str) -> list[dict[str, Any]]:
    """
    The C{[[service]]} tables of the TOML configuration file at C{path}, in
    its order (none for a file without them).

    @raise ConfigurationError: if the file cannot be read, or C{service} is
        not an array of tables.
    """
    tables = _load(path).get(SERVICES, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigurationError(
            f"config file {path}: {SERVICES} must be tables, each [[{SERVICES}]]."
        )
    return tables


def tableArguments(settings: dict[str, Any], options: usage.Options, where: str) -> list[str]:
    """
    The command-line arguments for C{options} of one table of settings (the
    file's top level, or one service), as L{configArguments} describes.

    @param where: what the errors name (C{config file PATH}, say).
    """
    flags, valued = _longOptions(options)
    repeatable = repeatableOptions(options)
    arguments: list[str] = []
    for key, value in settings.items():
        if key in _FORBIDDEN:
            raise ConfigurationError(f"{where}: the key {key!r} cannot be set in a config file.")
        if key in flags:
            if not isinstance(value, bool):
                raise ConfigurationError(
                    f"{where}: {key} is a flag and takes true or false, not {_kind(value)}."
                )
            if value:
                arguments.append(f"--{key}")
        elif key in valued:
            items = value if isinstance(value, list) else [value]
            if isinstance(value, list) and key not in repeatable:
                raise ConfigurationError(
                    f"{where}: {key} takes one string or number, not an array."
                )
            for item in items:
                if isinstance(item, bool) or not isinstance(item, str | int | float):
                    raise ConfigurationError(
                        f"{where}: {key} takes"
                        f" {'strings or numbers' if key in repeatable else 'a string or a number'},"
                        f" not {_kind(item)}."
                    )
                arguments += [f"--{key}", str(item)]
        else:
            raise ConfigurationError(
                f"{where} has an unknown key {key!r}{_suggestion(key, flags | valued)}."
            )
    return arguments


def repeatableOptions(options: usage.Options) -> frozenset[str]:
    """
    The repeatable options of an options class: the option methods
    (C{opt_*}) that take an argument and whose value starts as a list, which
    each use appends to (like C{--client-certs} in L{mtlsd._tap.Options}).

    @param options: an instance of the options class.
    @return: their long names.
    """
    _, valued = _longOptions(options)
    parameters: list[list[Any]] = []
    reflect.accumulateClassList(type(options), "optParameters", parameters)
    return frozenset(
        name
        for name in valued - {parameter[0] for parameter in parameters}
        if isinstance(options.get(name), list)
    )


def mergeArguments(
    fileArguments: list[str],
    commandLine: list[str],
    repeatable: Iterable[str],
    options: usage.Options | None = None,
) -> list[str]:
    """
    Combine the arguments of a configuration file with the command line, the
    command line winning: the file's arguments come first, so a parameter
    keeps the command line's value, and the file's uses of a repeatable
    option that the command line also gives are left out, so the command
    line's list replaces the file's.

    @param fileArguments: arguments from L{configArguments}.
    @param commandLine: the command-line arguments (without the program
        name).
    @param repeatable: the long names of the repeatable options, such as
        L{repeatableOptions} returns.
    @param options: an instance of the options class, to recognize the
        command line's options exactly as C{usage.Options} does (short
        names, unambiguous abbreviations such as C{--client}, a value that
        looks like an option).  Without it, only C{--name VALUE} and
        C{--name=VALUE} spelled in full count.
    @return: the arguments to parse.
    """
    wanted = frozenset(repeatable)
    given = givenOptions(commandLine, wanted, options) & wanted
    kept: list[str] = []
    position = 0
    while position < len(fileArguments):
        argument = fileArguments[position]
        name, equals, _ = argument[2:].partition("=")
        if argument.startswith("--") and name in given:
            position += 1 if equals else 2
            continue
        kept.append(argument)
        position += 1
    return kept + commandLine


def _load(path: str) -> dict[str, Any]:
    """
    Read and parse a TOML file.

    @raise ConfigurationError: if it cannot be read or parsed.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigurationError(
                f"config file {path} cannot be read: TOML needs Python 3.11 or the tomli package."
            ) from None
    data = readFile(path, "config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigurationError(
            f"config file {path} is not valid TOML: line {line} is not UTF-8."
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"config file {path} is not valid TOML: {e}.") from None


def _longOptions(options: usage.Options) -> tuple[frozenset[str], frozenset[str]]:
    """
    The long options of an options class.

    @return: the names of those that take no argument (flags, and option
        methods without an argument) and of those that take one.
    """
    longOptions: list[str] = options.longOpt
    flags = frozenset(name for name in longOptions if not name.endswith("="))
    valued = frozenset(name[:-1] for name in longOptions if name.endswith("="))
    return flags, valued


def givenOptions(
    commandLine: list[str], names: frozenset[str], options: usage.Options | None
) -> set[str]:
    """
    The long names of the options a command line gives.

    @param names: the options of interest, for when C{options} is L{None}.
    @param options: the options class, to recognize every spelling.
    """
    if options is None:
        given = set()
        position = 0
        while position < len(commandLine) and commandLine[position] != "--":
            name, equals, _ = commandLine[position].partition("=")
            if name.startswith("--") and name[2:] in names:
                given.add(name[2:])
                position += 0 if equals else 1
            position += 1
        return given
    try:
        found, _ = getopt.getopt(commandLine, options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return set()  # parsing will report it
    synonyms: dict[str, str] = options.synonyms
    given = set()
    for option, _ in found:
        name = option.lstrip("-")
        given.add(synonyms.get(name, synonyms.get(name.replace("-", "_"), name)))
    return given


def _kind(value: object) -> str:
    """
    The TOML type of a parsed value, for error messages.
    """
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    return "a time"


def _suggestion(key: str, known: Iterable[str]) -> str:
    """
    A hint at the option an unknown key may have meant, or C{""}.
    """
    candidates = sorted(set(known) - _FORBIDDEN)
    close = difflib.get_close_matches(key.replace("_", "-").lower(), candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
