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
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

FORMATS = ("text", "json")

# The fields of mtlsd's events, under their stable JSON names.
_FIELDS = {
    "client": "client",
    "commonName": "cn",
    "fingerprint": "fingerprint",
    "serial": "serial",
    "reason": "reason",
    "depth": "depth",
    "subject": "subject",
    "limit": "limit",
    "bytesIn": "bytes_in",
    "bytesOut": "bytes_out",
    "duration": "duration",
    "handshakeDuration": "handshake_duration",
    "resumed": "resumed",
    "mtlsdWorker": "worker",
    "pid": "pid",
    "error": "error",
    "problem": "problem",
    "count": "count",
    "timeout": "timeout",
    "dnsNames": "dns_names",
    "uris": "uris",
    "ipAddresses": "ip_addresses",
    "organizationalUnits": "ous",
}


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
        "message": formatEvent(event),
    }
    for field, name in _FIELDS.items():
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
    writer: ILogObserver = _JSONLines(out) if logFormat == "json" else textFileLogObserver(out)
    return FilteringLogObserver(writer, [LogLevelFilterPredicate(defaultLogLevel=level)])
