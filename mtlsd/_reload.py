# -*- test-case-name: mtlsd.test.test_reload -*-
"""
Trust that changes without a restart: watch the files, reload on change or
SIGHUP, keep the old settings when the new ones are bad, and cut the
established connections the new settings no longer admit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import _signals
from ._context import ServerContext
from ._events import emit, serviceField
from ._files import Path
from ._settings import ServerTLSSettings

DEFAULT_RELOAD_INTERVAL = 2.0

log = Logger(namespace="mtlsd")


def _fingerprint(paths: Sequence[Path]) -> tuple[bytes | None, ...]:
    """
    What the watched files hold now: a digest of each (L{None} when it cannot
    be read).  Digests see both a file rewritten in place and one replaced
    by a rename, whatever the timestamps say.
    """
    digests: list[bytes | None] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                digests.append(hashlib.sha256(f.read()).digest())
        except OSError:
            digests.append(None)
    return tuple(digests)


def _counted(count: int, thing: str) -> str:
    return f"{count} {thing}" + ("" if count == 1 else "s")


class TrustReloader(Service):
    """
    Reloads a L{ServerContext}'s settings when its files change (checked
    every C{interval} seconds) or on SIGHUP (as does every other reloader of
    the process: one handler serves them all, see L{mtlsd._signals}).

    @ivar reloads: how many reloads succeeded.
    @ivar failures: how many failed (the settings in force were kept).
    """

    def __init__(
        self,
        context: ServerContext,
        load: Callable[[], ServerTLSSettings],
        paths: Sequence[Path],
        clock: IReactorTime,
        interval: float = DEFAULT_RELOAD_INTERVAL,
        keepLiveSessions: bool = False,
        service: str | None = None,
    ) -> None:
        """
        @param load: reads the files and returns new settings, or raises
            L{ConfigurationError}.
        @param paths: the files to watch.
        @param interval: seconds between checks; 0 checks only on SIGHUP.
        @param keepLiveSessions: leave established connections alone after
            a reload instead of cutting those no longer admitted.
        @param service: the daemon's service these files are of, named in
            the events.
        """
        self._serviceField = serviceField(service)
        self.context = context
        self._load = load
        self._paths = tuple(paths)
        self._clock = clock
        self._interval = interval
        self._keepLiveSessions = keepLiveSessions
        self._seen = _fingerprint(self._paths)
        self._poll: LoopingCall | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._warned: set[str] = set()
        self.reloads = 0
        self.failures = 0

    def startService(self) -> None:
        """
        Log what the trust files make trusted and any warning, start polling
        the files, and answer SIGHUP.
        """
        super().startService()
        # Read again as the user the daemon runs as (twistd's --uid/--gid
        # drop root between loading the files and starting this service).
        self._seen = _fingerprint(self._paths)
        for path, digest in zip(self._paths, self._seen, strict=True):
            if digest is None:
                emit(
                    log,
                    "warning",
                    **self._serviceField,
                    text="cannot read {path} as this user: a change to it will not be picked up"
                    " (with --uid, make the files readable by that user or group)",
                    path=path,
                )
        self._logTrust()
        self._warn()
        if self._interval > 0:
            self._poll = LoopingCall(self.check)
            self._poll.clock = self._clock
            self._poll.start(self._interval, now=False)
        self._unsubscribe = _signals.sighup.subscribe(self._clock, self._reloadOnSignal)

    def stopService(self) -> None:
        """
        Stop polling and answering SIGHUP.
        """
        super().stopService()
        if self._poll is not None:
            self._poll.stop()
            self._poll = None
        # The last one out puts back the handler found before, or ignores
        # SIGHUP: connections may drain for a while yet, and its default
        # action would kill the process.
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _reloadOnSignal(self) -> None:
        emit(
            log,
            "sighup",
            **self._serviceField,
        )
        self.reload()

    def check(self) -> bool:
        """
        Reload if any watched file changed since the last look.

        @return: whether a reload was attempted.
        """
        try:
            now = _fingerprint(self._paths)
            if now == self._seen:
                # Time passes: a client certificate may have expired, a CRL
                # may be near its end.
                if not self._keepLiveSessions:
                    self.context.cutExpired()
                    self.context.recheck()
                self._warn()
                return False
            self.reload()
        except Exception:
            # Whatever happens, the next check must still run.
            emit(
                log,
                "reload-failed",
                **self._serviceField,
                failure=Failure(),
                text="checking the trust files failed",
            )
        return True

    def _logTrust(self) -> None:
        """
        Log what each trust file makes trusted.
        """
        for bundle in self.context.settings.bundles:
            emit(log, "trusted", **self._serviceField, bundle=bundle)

    def _warn(self) -> None:
        """
        Log each warning about the settings in force once.
        """
        for warning in self.context.settings.warnings():
            if warning not in self._warned:
                self._warned.add(warning)
                emit(log, "warning", **self._serviceField, problem=warning)

    def reload(self) -> bool:
        """
        Read the files again and use them: new handshakes get the new
        settings and, unless live sessions are kept, established connections
        whose peer is no longer admitted are cut.  On any error the settings
        in force stay, and one line says why.

        @return: whether the new settings are in force.
        """
        self._seen = _fingerprint(self._paths)
        try:
            settings = self._load()
            self.context.update(settings)
        except Exception as e:  # ConfigurationError, or anything OpenSSL refuses
            self.failures += 1
            emit(
                log,
                "reload-failed",
                **self._serviceField,
                error=str(e),
            )
            return False
        self.reloads += 1
        self._logTrust()
        self._warned.clear()
        self._warn()
        cut = 0 if self._keepLiveSessions else self.context.revalidate()
        trusted, crls = len(settings.anchors), len(settings.crls)
        emit(
            log,
            "reloaded",
            **self._serviceField,
            trusted=trusted,
            crls=crls,
            cut=cut,
            trustedText=_counted(trusted, "trusted certificate"),
            crlsText=_counted(crls, "CRL"),
            cutText=_counted(cut, "connection") + " cut",
        )
        return True
