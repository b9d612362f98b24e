"""
Packaging: what a wheel of mtlsd ships, and what an install lets twistd find.
"""

import os
import subprocess
import sys
import zipfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def run(*argv: str, cwd: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


class WheelTests(SynchronousTestCase):
    def test_wheelContents(self) -> None:
        """
        The wheel ships the package, C{py.typed} and the twistd plugin file,
        and neither a C{twisted/__init__.py}, a
        C{twisted/plugins/__init__.py} (they would shadow Twisted's own) nor
        a C{dropin.cache}; C{twistd} finds the plugin when the wheel's files
        are on the path.
        """
        out = os.path.abspath(self.mktemp())
        # A dropin.cache in the source tree must not reach the wheel.
        open(os.path.join(ROOT, "twisted", "plugins", "dropin.cache"), "ab").close()
        result = run(
            sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT, cwd=ROOT
        )
        if result.returncode != 0 and "No matching distribution" in result.stderr:
            raise SkipTest("cannot fetch the build backend: " + result.stderr[-200:])
        self.assertEqual(result.returncode, 0, result.stderr)
        [wheel] = [f for f in os.listdir(out) if f.endswith(".whl")]
        names = zipfile.ZipFile(os.path.join(out, wheel)).namelist()
        self.assertIn("twisted/plugins/mtlsd_plugin.py", names)
        self.assertIn("mtlsd/py.typed", names)
        self.assertIn("mtlsd/_tap.py", names)
        for forbidden in ("twisted/__init__.py", "twisted/plugins/__init__.py"):
            self.assertNotIn(forbidden, names)
        self.assertEqual([n for n in names if n.endswith("dropin.cache")], [])
        self.assertEqual([n for n in names if n.startswith("tests/")], [])

        # Unpacked on sys.path, the plugin is found next to Twisted's own.
        target = os.path.join(out, "site")
        zipfile.ZipFile(os.path.join(out, wheel)).extractall(target)
        probe = run(
            sys.executable, "-c",
            "import twisted.plugins.mtlsd_plugin as p; print(p.__file__);"
            "from twisted.application.service import IServiceMaker;"
            "from twisted.plugin import getPlugins;"
            "print(sorted(m.tapname for m in getPlugins(IServiceMaker)))",
            cwd=out,
            PYTHONPATH=target,
        )  # fmt: skip
        self.assertEqual(probe.returncode, 0, probe.stderr)
        path, makers = probe.stdout.splitlines()
        self.assertTrue(path.startswith(target), path)
        self.assertIn("'mtlsd'", makers)


class InstallTests(SynchronousTestCase):
    def test_twistdFindsPlugin(self) -> None:
        """
        Installed as the README says, C{twistd} run from any directory (not
        the checkout, whose C{twisted/plugins} would be found through the
        current directory) lists C{mtlsd}.  setuptools' default editable
        install fails this.
        """
        elsewhere = os.path.abspath(self.mktemp())
        os.mkdir(elsewhere)
        result = run(os.path.join(BIN, "twistd"), "--help", cwd=elsewhere)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("mtlsd", result.stdout)
