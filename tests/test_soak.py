"""
The soak script, short: good clients' checksummed payloads, bad clients and
trust changes at once, and nothing lost, let through or leaked.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests._process import REPOSITORY, environment


class SoakTests(SynchronousTestCase):
    def test_short(self) -> None:
        """
        C{scripts/soak.py --duration 15}: exit 0, every payload intact,
        every bad client refused and logged, every trust change taken.
        """
        done = subprocess.run(
            [sys.executable, os.path.join(REPOSITORY, "scripts", "soak.py"), "--duration", "15"],
            capture_output=True, text=True, timeout=120, env=environment(),
        )  # fmt: skip
        print("\n" + done.stdout)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("corrupted or lost: 0", done.stdout)
        self.assertIn("- problems: 0", done.stdout)
