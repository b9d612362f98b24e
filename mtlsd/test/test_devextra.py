"""
With only mtlsd's runtime dependencies installed (C{pip install .}, as the
README's quick start says), every test module imports and the tests that need
a package of the C{dev} extra skip, saying C{pip install 'mtlsd[dev]'}
(L{mtlsd.test._devextra}).  Here a child process hides the dev extra's
modules; C{.ci/run} also runs C{trial mtlsd} in a real plain install.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import mtlsd
from mtlsd.test._devextra import INSTALL

# Importing a module that is None in sys.modules raises ImportError
# (ModuleNotFoundError), as if it were not installed.
_HIDE = "import sys\nfor name in sys.argv[1:]:\n    sys.modules[name] = None\n"

_IMPORT_ALL = _HIDE + (
    "import importlib, pkgutil, mtlsd.test\n"
    "for module in pkgutil.iter_modules(mtlsd.test.__path__, 'mtlsd.test.'):\n"
    "    importlib.import_module(module.name)\n"
)

_TRIAL = _HIDE + (
    "from twisted.scripts.trial import run\n"
    "sys.argv[1:] = ['mtlsd.test.test_fuzz', 'mtlsd.test.test_proxyheader']\n"
    "run()\n"
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def devModules() -> list[str]:
    """
    The top-level modules of the installed packages of mtlsd's C{dev}
    extra, read from mtlsd's metadata (the list follows pyproject.toml).
    """
    try:
        requirements = importlib.metadata.requires("mtlsd") or []
    except importlib.metadata.PackageNotFoundError:
        raise SkipTest("mtlsd is not installed, so its dev extra is unknown") from None
    dev = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name and re.search(r"""extra\s*==\s*["']dev["']""", requirement):
            dev.add(_canonical(name[0]))
    return sorted(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if dev & {_canonical(d) for d in distributions}
    )


class WithoutDevExtraTests(SynchronousTestCase):
    def child(self, script: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{script} in a child Python that finds this mtlsd but not the
        dev extra's modules.
        """
        cwd = os.path.abspath(self.mktemp())
        os.mkdir(cwd)
        source = os.path.dirname(os.path.dirname(os.path.abspath(mtlsd.__file__)))
        return subprocess.run(
            [sys.executable, "-c", script, *devModules()],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": source},
        )

    def test_hidden(self) -> None:
        """
        The child cannot import hypothesis, whether or not it is installed.
        """
        result = self.child(_HIDE + "import hypothesis\n")
        self.assertIn("ModuleNotFoundError", result.stderr)

    def test_everyModuleImports(self) -> None:
        """
        Every test module of mtlsd imports without the dev extra: one that
        needs it guards the import.
        """
        result = self.child(_IMPORT_ALL)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_skipsNameTheExtra(self) -> None:
        """
        Without the dev extra the fuzz tests (hypothesis) and the checks
        against the independent PROXY parser (proxy-protocol) skip, the
        reason naming the module and C{pip install 'mtlsd[dev]'}; the tests
        that need neither run; the run passes.
        """
        result = self.child(_TRIAL)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        for module in ("hypothesis", "proxyprotocol"):
            self.assertIn(
                f"{module} is not installed; it comes with the dev extra: {INSTALL}", output
            )
        self.assertIn("pip install 'mtlsd[dev]'", INSTALL)
        self.assertRegex(output, r"test_unknown \.\.\. +\[OK\]")
        self.assertRegex(output, r"test_bundle \.\.\. +\[SKIPPED\]")
        self.assertRegex(output.splitlines()[-1], r"^PASSED \(skips=\d+, successes=\d+\)$")
