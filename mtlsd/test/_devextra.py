"""
Tests that need a package of mtlsd's C{dev} extra skip where it is not
installed, saying how to install it: C{pip install .}, as the README's quick
start installs mtlsd, brings only the runtime dependencies, and C{trial mtlsd}
must pass there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

INSTALL = "pip install 'mtlsd[dev]'"

_F = TypeVar("_F", bound=Callable[..., Any])


def missing(error: ImportError) -> str:
    """
    The skip reason for tests that need a module of the C{dev} extra.

    @param error: the error importing that module.
    @return: a sentence naming the module and the command that installs it.
    """
    module = (error.name or str(error)).partition(".")[0]
    return f"{module} is not installed; it comes with the dev extra: {INSTALL}"


class _Inert:
    """
    Stands in for hypothesis' strategies and health checks: every attribute,
    call and C{|} gives this object again.
    """

    def __getattr__(self, name: str) -> _Inert:
        return self

    def __call__(self, *args: object, **kwargs: object) -> _Inert:
        return self

    def __or__(self, other: object) -> _Inert:
        return self


def _decorator(*args: object, **kwargs: object) -> Callable[[_F], _F]:
    """
    Stands in for hypothesis' C{given}, C{example} and C{settings}: the
    decorator it gives returns the test unchanged (and skipped, by the
    module's C{skip}).
    """
    return lambda f: f


# Without hypothesis a module of property tests imports with these in its
# place, its decorators run, and its tests are reported as skipped (trial's
# module-level C{skip}) rather than the module failing to import.  Typed Any:
# they take the place of hypothesis' own names.
st: Any = _Inert()
HealthCheck: Any = st
given: Any = _decorator
example: Any = _decorator
settings: Any = _decorator
