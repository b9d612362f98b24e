# -*- test-case-name: mtlsd.test.test_logging -*-
"""
The daemon's log output: text (twistd's format) or one JSON object per line,
at info level and above, written where twistd would write it.
"""

from __future__ import annotations

import datetime
import json
import signal
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from ._events import JSON_NAMES

FORMATS = ("text", "json")


def _message(event: dict[str, Any]) -> str:
    """
    An event's text.  mtlsd's own events name plain fields in their formats,
    so C{str.format_map} formats them, several times faster than Twisted's
    L{formatEvent} (which also calls callables); every other event, or one
    that does not format that way, goes to L{formatEvent}.
    """
    if "mtlsdEvent" in event:
        try:
            return str(event["log_format"].format_map(event))
        except Exception:
            pass
    return formatEvent(event)


def _system(event: dict[str, Any]) -> str:
    """
    The C{[system]} column of twistd's text lines, as Twisted writes it.
    """
    system = event.get("log_system")
    if system is not None:
        try:
            return str(system)
        except Exception:
            return "UNFORMATTABLE"
    level = event.get("log_level")
    service = f":{event['service']}" if event.get("service") else ""
    return f"{event.get('log_namespace', '-')}{service}#{level.name if level is not None else '-'}"


@implementer(ILogObserver)
class _TextLines:
    """
    twistd's text lines (L{formatEventAsClassicLogText}: C{TIME [SYSTEM]
    MESSAGE}), written for less: the time stamp, whose format stops at the
    second, is formatted once a second, and mtlsd's events by L{_message}.
    Events with a traceback go through Twisted's formatter.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._second: int | None = None
        self._stamp = "-"

    def _time(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second)
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_format") and "mtlsdEvent" in event and "log_failure" not in event:
            line = f"{self._time(event.get('log_time'))} [{_system(event)}] {_message(event)}"
            text: str | None = line.replace("\n", "\n\t") + "\n"
        else:
            text = formatEventAsClassicLogText(event, formatTime=self._time)
        if text:
            self._out.write(text)
            self._out.flush()


def jsonLine(event: dict[str, Any]) -> str:
    """
    One log event as one line of JSON: C{time} (ISO 8601, UTC), C{level},
    C{event} (mtlsd's event name, or C{log} for others), C{message} (the
    text line), and for mtlsd's events their fields under stable names.
    """
    record: dict[str, Any] = {
        "time": datetime.datetime.fromtimestamp(
            event.get("log_time", 0), datetime.timezone.utc
        ).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "event": event.get("mtlsdEvent", "log"),
        "message": _message(event),
    }
    for field, name in JSON_NAMES.items():
        if field in event:
            value = event[field]
            record[name] = list(value) if isinstance(value, tuple) else value
    if "log_failure" in event:
        record["traceback"] = event["log_failure"].getTraceback()
    return json.dumps(record, default=str) + "\n"


@implementer(ILogObserver)
class _JSONLines:
    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self._out.write(jsonLine(event))
        self._out.flush()


def jsonLinesObserver(out: IO[str]) -> ILogObserver:
    """
    @return: an observer writing every event to C{out} as one line of JSON
        (L{jsonLine}).
    """
    return _JSONLines(out)


def logObserver(
    logFormat: str, logfile: str, nodaemon: bool, level: LogLevel = LogLevel.info
) -> ILogObserver:
    """
    An observer writing events of C{level} and above where twistd would:
    standard output for C{--logfile=-} or C{-n} without C{--logfile}, else
    the log file (C{twistd.log} by default), rotated as twistd rotates it
    (by size, and on SIGUSR1).

    @param logFormat: C{text} or C{json}.
    """
    out: IO[str]
    if logfile == "-" or (nodaemon and not logfile):
        out = sys.stdout
    else:
        logFile = LogFile.fromFullPath(logfile or "twistd.log")

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)  # type: ignore[attr-defined]

        # As twistd does for its own log file: SIGUSR1 rotates it.
        signal.signal(signal.SIGUSR1, rotate)
        out = logFile
    writer: ILogObserver = _JSONLines(out) if logFormat == "json" else _TextLines(out)
    return FilteringLogObserver(writer, [LogLevelFilterPredicate(defaultLogLevel=level)])
