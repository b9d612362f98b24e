# -*- test-case-name: mtlsd.test.test_reload -*-
"""
SIGHUP for everything in one process that answers it (each reloader, the
main process of C{--workers}): one handler, installed while anyone is
subscribed, that hands each subscriber's work to its reactor and chains the
handler that was there before it.

A process has one handler per signal: each service installing its own
would leave only the last one answering (two C{mtls:} endpoints, two
reloaders: one reloaded).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.internet.interfaces import IReactorTime


def _schedule(clock: IReactorTime, work: Callable[[], object]) -> None:
    """
    Run C{work} soon in C{clock}'s reactor.  A signal handler may run in the
    middle of reactor code: it only hands the work over, the way Twisted's
    own handlers do (C{callFromThread} wakes the reactor up; a test clock
    has no such method, and gets a C{callLater(0)}).
    """
    callFromThread = getattr(clock, "callFromThread", None)
    if callFromThread is not None:
        callFromThread(work)
    else:
        clock.callLater(0, work)


class _Subscription:
    def __init__(self, clock: IReactorTime, callback: Callable[[], object]) -> None:
        self.clock = clock
        self.callback = callback
        self.active = True

    def run(self) -> None:
        # Unsubscribed between the signal and now (a service stopped): no.
        if self.active:
            self.callback()


class SignalFanOut:
    """
    One signal's handler, shared by every subscriber in the process.
    """

    def __init__(self, signum: int) -> None:
        self._signum = signum
        self._subscriptions: list[_Subscription] = []
        self._previous: Any = None
        self._handler = self._handle  # one object, to recognise it installed
        self._handling = False

    def subscribe(self, clock: IReactorTime, callback: Callable[[], object]) -> Callable[[], None]:
        """
        Call C{callback} in C{clock}'s reactor after each signal.  The first
        subscriber installs the handler, chaining the one it finds.  (A
        handler the program puts in later replaces it, as any signal handler
        does, unless it too chains the one it found.)

        @return: a function that unsubscribes (again: nothing).  When the
            last subscriber goes, the handler found at the first
            subscription is put back, or, if it was the default action or
            none set from Python, the signal is ignored: a stopping daemon
            may drain connections for a while yet, and SIGHUP's default
            action would kill it.  A handler put in since is left alone.
        """
        subscription = _Subscription(clock, callback)
        if not self._subscriptions:
            self._previous = signal.signal(self._signum, self._handler)
        self._subscriptions.append(subscription)
        return lambda: self._unsubscribe(subscription)

    def _unsubscribe(self, subscription: _Subscription) -> None:
        if not subscription.active:
            return
        subscription.active = False
        self._subscriptions.remove(subscription)
        if self._subscriptions:
            return
        previous, self._previous = self._previous, None
        if signal.getsignal(self._signum) is self._handler:
            signal.signal(self._signum, previous if callable(previous) else signal.SIG_IGN)

    @property
    def subscribers(self) -> int:
        """
        How many are subscribed.
        """
        return len(self._subscriptions)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._handling:
            # Called back by the handler this one chains (one put in, chaining
            # this one, while it was out of use): once is enough.
            return
        self._handling = True
        try:
            for subscription in list(self._subscriptions):
                _schedule(subscription.clock, subscription.run)
            # Whoever handled the signal before still does (last: should it
            # raise, the subscribers are already served).
            if callable(self._previous):
                self._previous(signum, frame)
        finally:
            self._handling = False


sighup = SignalFanOut(signal.SIGHUP)
