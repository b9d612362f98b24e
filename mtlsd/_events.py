# -*- test-case-name: mtlsd.test.test_events -*-
"""
The one table of mtlsd's log events: for each, its level, its text, its
fields (with their JSON names) and the metrics it moves.  Emitters call
L{emit}; the text and JSON observers and the metrics read the table, so
adding an event with its metric touches this table and the emitter only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import field, frozen
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ._policy import ALLOW_KINDS

# Every field of mtlsd's events, under its stable JSON name (those naming a
# client as the allow-list kinds do).
JSON_NAMES: Mapping[str, str] = {
    "client": "client",
    "serial": "serial",
    **{kind.identity: kind.jsonName for kind in ALLOW_KINDS},
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
    "path": "path",
    "bundle": "bundle",
    "count": "count",
    "timeout": "timeout",
    "trusted": "trusted",
    "crls": "crls",
    "cut": "cut",
    "why": "why",
    "delay": "delay",
    "method": "method",
    "status": "status",
    "headers": "headers",
    "checks": "checks",
    "service": "service",
    "serverName": "server_name",
    "responder": "responder",
    "result": "result",
}


@frozen
class Metric:
    """
    A Prometheus metric an event moves.

    @ivar name: the metric's name, as published (a counter's without
        C{_total}).
    @ivar kind: C{counter}, C{gauge} or C{histogram}.
    @ivar help: its help text.
    @ivar labels: each label's name and where its value comes from: the
        name of a field of the event, or C{=VALUE} for a fixed value.
    @ivar amount: for a counter, the field whose value is added (default
        1); for a gauge, the step (+1 or -1); for a histogram, the field
        observed.
    @ivar perProcess: not moved by the events of C{--workers}' workers,
        because the main process counts the same thing itself.
    """

    name: str
    kind: str
    help: str
    labels: tuple[tuple[str, str], ...] = ()
    amount: str | int = 1
    perProcess: bool = False


@frozen
class Event:
    """
    One kind of log event.

    @ivar text: the text line, a format naming the event's fields (and
        text-only fields, computed by the emitter).
    @ivar fields: the fields the JSON line carries (see L{JSON_NAMES}).
    """

    name: str
    level: LogLevel
    text: str
    fields: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = field(default=())


_IDENTITY = tuple(kind.identity for kind in ALLOW_KINDS)
_ACTIVE = "mtlsd_connections_active", "gauge", "Established connections."
_BYTES = "mtlsd_bytes", "counter", "Application bytes relayed, by direction."
_RELOADS = "mtlsd_reloads", "counter", "Trust reloads, by result."

EVENTS: Mapping[str, Event] = {
    event.name: event
    for event in [
        Event(
            "accepted",
            LogLevel.info,
            "accepted {client}: CN={commonName} sha256={fingerprint} serial={serial}{uriText}"
            "{checksText}",
            (
                "client",
                "commonName",
                "fingerprint",
                "serial",
                "uris",
                "resumed",
                "handshakeDuration",
                "checks",
            ),
            (
                Metric(
                    "mtlsd_connections_accepted", "counter", "Clients admitted after the handshake."
                ),
                Metric(*_ACTIVE, amount=+1),
                Metric(
                    "mtlsd_handshake_duration_seconds",
                    "histogram",
                    "From TCP accept to an admitted client.",
                    amount="handshakeDuration",
                ),
            ),
        ),
        Event(
            "closed",
            LogLevel.info,
            "closed {client}: CN={commonName} in={bytesIn} out={bytesOut} duration={duration:.3f}s",
            ("client", "commonName", "bytesIn", "bytesOut", "duration"),
            (
                Metric(*_ACTIVE, amount=-1),
                Metric(*_BYTES, labels=(("direction", "=in"),), amount="bytesIn"),
                Metric(*_BYTES, labels=(("direction", "=out"),), amount="bytesOut"),
            ),
        ),
        Event(
            "rejected",
            LogLevel.info,
            "rejected {client}: {reason}{detail}",
            ("client", "reason", "depth", "subject", *_IDENTITY),
            (
                Metric(
                    "mtlsd_handshakes_rejected",
                    "counter",
                    "Connections turned away before the application, by reason.",
                    (("reason", "reason"),),
                ),
            ),
        ),
        Event(
            "cut",
            LogLevel.info,
            "cut {client}: CN={commonName} sha256={fingerprint}: {reason}",
            ("client", "commonName", "fingerprint", "reason"),
            (
                Metric(
                    "mtlsd_connections_cut",
                    "counter",
                    "Live connections cut: trust changed (revoked, no longer trusted, not allowed"
                    " by policy) or shutdown.",
                    (("reason", "reason"),),
                ),
            ),
        ),
        Event(
            "refused",
            LogLevel.info,
            "refused {client}: {limit} reached",
            ("client", "limit"),
            (
                Metric(
                    "mtlsd_connections_refused",
                    "counter",
                    "Connections refused by a limit.",
                    (("limit", "limit"),),
                ),
            ),
        ),
        Event(
            "timeout",
            LogLevel.info,
            "timeout {client}: CN={commonName}: {limit}",
            ("client", "commonName", "limit"),
            (
                Metric(
                    "mtlsd_connections_timed_out",
                    "counter",
                    "Connections closed by the idle or lifetime limit.",
                    (("limit", "limit"),),
                ),
            ),
        ),
        Event(
            "shared-certificate",
            LogLevel.warn,
            "client {client} presented the server's own certificate: anyone holding it"
            " can also impersonate this server; give clients certificates of their own",
            ("client",),
        ),
        Event(
            "reloaded",
            LogLevel.info,
            "reloaded: {trustedText}, {crlsText}; {cutText}",
            ("trusted", "crls", "cut"),
            (Metric(*_RELOADS, labels=(("result", "=ok"),), perProcess=True),),
        ),
        Event(
            "reload-failed",
            LogLevel.error,
            "reload failed, keeping the trust in force: {error}",
            ("error",),
            (Metric(*_RELOADS, labels=(("result", "=failed"),), perProcess=True),),
        ),
        Event("sighup", LogLevel.info, "SIGHUP: reloading"),
        Event("trusted", LogLevel.info, "trusted: {bundle}", ("bundle",)),
        Event("warning", LogLevel.warn, "WARNING: {problem}", ("problem", "path")),
        Event(
            "draining",
            LogLevel.info,
            "shutting down: waiting up to {timeout}s for {count} connections",
            ("timeout", "count"),
        ),
        Event(
            "drain-timeout", LogLevel.info, "drain timeout: cutting {count} connections", ("count",)
        ),
        Event(
            "backend-unavailable",
            LogLevel.info,
            "backend unavailable: {error} (client {client})",
            ("error", "client"),
            (
                Metric(
                    "mtlsd_backend_connect_failures",
                    "counter",
                    "Backend connections that failed.",
                ),
            ),
        ),
        Event(
            "http-request",
            LogLevel.info,
            "{client} CN={commonName}: {method} {path} {status}",
            ("client", "commonName", "method", "path", "status", "duration"),
            (
                Metric(
                    "mtlsd_http_requests",
                    "counter",
                    "HTTP requests forwarded (--forward-http), by response status.",
                    labels=(("code", "status"),),
                ),
            ),
        ),
        Event(
            "forged-headers",
            LogLevel.warn,
            "removed identity headers sent by {client} (CN={commonName}): {headers}",
            ("client", "commonName", "headers"),
            (
                Metric(
                    "mtlsd_http_forged_headers",
                    "counter",
                    "Connections whose client sent headers that only mtlsd may set.",
                ),
            ),
        ),
        Event(
            "forbidden",
            LogLevel.info,
            "forbidden {client}: CN={commonName}: {method} {path}",
            ("client", "commonName", "method", "path"),
            (
                Metric(
                    "mtlsd_web_forbidden",
                    "counter",
                    "twisted.web requests refused by mtlsd.web.requireIdentity.",
                ),
            ),
        ),
        Event(
            "ocsp-answer",
            LogLevel.debug,
            "OCSP {responder}: {result} for serial {serial}",
            ("responder", "result", "serial", "error"),
            (
                Metric(
                    "mtlsd_ocsp_requests",
                    "counter",
                    "OCSP requests sent, by result: good, revoked, unknown, invalid (an answer"
                    " that cannot be relied on), unavailable (no answer).",
                    (("result", "result"),),
                ),
            ),
        ),
        Event(
            "ocsp-cache-hit",
            LogLevel.debug,
            "OCSP: cached answer for serial {serial}",
            ("serial",),
            (Metric("mtlsd_ocsp_cache_hits", "counter", "OCSP answers taken from the cache."),),
        ),
        Event(
            "ocsp-unavailable",
            LogLevel.warn,
            "WARNING: OCSP responder {responder} failed ({error}): {then} until it answers",
            ("responder", "error"),
        ),
        Event(
            "ocsp-available",
            LogLevel.info,
            "OCSP responder {responder} answers again",
            ("responder",),
        ),
        Event("outbound-lost", LogLevel.info, "outbound connection lost: {error}", ("error",)),
        Event(
            "proxy-header-error",
            LogLevel.warn,
            "cannot relay {client}: {error}",
            ("client", "error"),
        ),
        Event(
            "worker-started",
            LogLevel.info,
            "worker {mtlsdWorker} started: pid {pid}",
            ("mtlsdWorker", "pid"),
        ),
        Event(
            "worker-exited",
            LogLevel.warn,
            "worker {mtlsdWorker} exited ({why}): restarting it in {delay}s",
            ("mtlsdWorker", "why", "delay"),
        ),
    ]
}


def serviceField(service: str | None) -> dict[str, Any]:
    """
    The field naming the service of a daemon of many (see
    L{mtlsd._services}) in its events: none for a daemon of one.
    """
    return {} if service is None else {"service": service}


def emit(
    log: Logger,
    name: str,
    *,
    level: LogLevel | None = None,
    failure: Failure | None = None,
    text: str | None = None,
    **fields: Any,
) -> None:
    """
    Emit mtlsd's event C{name} (a key of L{EVENTS}) with C{fields}.

    @param level: another level than the table's (a rejection logged
        quietly, say).
    @param failure: the failure to log with it (and its traceback).
    @param text: another text than the table's, for a variant of the event
        (a warning about one file, say).
    """
    event = EVENTS[name]
    if failure is not None:
        log.failure(text or event.text, failure, level or event.level, mtlsdEvent=name, **fields)
    else:
        log.emit(level or event.level, text or event.text, mtlsdEvent=name, **fields)
