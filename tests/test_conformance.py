"""
Conformance scan by an independent scanner: sslyze (PyPI) against a running
daemon.

sslyze pins an older cryptography than mtlsd needs, so it lives in a
virtualenv of its own: the test runs the C{sslyze} command named by
C{MTLSD_SSLYZE} (C{.ci/run} sets it up), or one on C{PATH}, and is skipped
without one.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mtlsd._pki import SERVER_AUTH, DevelopmentPKI
from tests.test_daemon import DaemonTestMixin, writeCertificate

# Mozilla's "intermediate" TLS 1.2 suites (ssl-config.mozilla.org 5.7), as
# sslyze names them.
INTERMEDIATE_TLS12 = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


def sslyze() -> str:
    command = os.environ.get("MTLSD_SSLYZE") or shutil.which("sslyze")
    if not command:
        raise SkipTest("sslyze is not installed (MTLSD_SSLYZE or PATH; .ci/run installs it)")
    return command


class ConformanceTests(DaemonTestMixin, SynchronousTestCase):
    def scan(self, port: int, directory: str, *args: str) -> tuple[dict[str, Any], str]:
        """
        Run sslyze against the daemon; its JSON results and its report.
        """
        out = os.path.join(directory, f"sslyze-{len(os.listdir(directory))}.json")
        done = subprocess.run(
            [sslyze(), "--json_out", out, *args, f"127.0.0.1:{port}"],
            cwd=directory, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        # sslyze exits with 1 when the server is not compliant: the report says why.
        self.assertIn(done.returncode, (0, 1), done.stdout + done.stderr)
        with open(out) as f:
            [result] = json.load(f)["server_scan_results"]
        return result, done.stdout

    def check(
        self, profile: str, versions: set[str], *daemonArgs: str, directory: str | None = None
    ) -> list[str]:
        directory = directory or self.workDirectory()
        daemon = self.startDaemon(directory, "--reload-interval", "0", *daemonArgs)
        anonymous, _ = self.scan(daemon.port, directory, "--tlsv1_2", "--tlsv1_3")
        self.assertEqual(anonymous["connectivity_result"]["client_auth_requirement"], "REQUIRED")
        pki = os.path.join(directory, "mtlsd-pki")
        result, report = self.scan(
            daemon.port, directory,
            "--cert", os.path.join(pki, "client.crt"), "--key", os.path.join(pki, "client.key"),
            "--certinfo_ca_file", os.path.join(pki, "ca.crt"), f"--mozilla_config={profile}",
        )  # fmt: skip
        scans = result["scan_result"]
        offered = {
            version
            for version in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3")
            if scans[f"{version}_cipher_suites"]["result"]["accepted_cipher_suites"]
        }
        self.assertEqual(offered, versions)
        suites = {
            accepted["cipher_suite"]["name"]
            for accepted in scans["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"]
        }
        self.assertLessEqual(suites, INTERMEDIATE_TLS12)
        for version in ("tls_1_2", "tls_1_3"):
            for accepted in scans[f"{version}_cipher_suites"]["result"]["accepted_cipher_suites"]:
                self.assertIsNotNone(accepted["ephemeral_key"], accepted)  # forward secrecy
        self.assertFalse(scans["tls_compression"]["result"]["supports_compression"])
        renegotiation = scans["session_renegotiation"]["result"]
        self.assertTrue(renegotiation["supports_secure_renegotiation"] or versions == {"tls_1_3"})
        self.assertFalse(renegotiation["is_vulnerable_to_client_renegotiation_dos"])
        self.assertFalse(scans["heartbleed"]["result"]["is_vulnerable_to_heartbleed"])
        self.assertFalse(scans["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"])
        self.assertTrue(scans["tls_fallback_scsv"]["result"]["supports_fallback_scsv"])
        verdict = report[report.index("COMPLIANCE AGAINST") :]
        problems = [line.strip() for line in verdict.splitlines() if line.strip().startswith("*")]
        self.assertEqual(problems, [], verdict)
        self.assertIn("OK - Compliant.", verdict)
        return [line.strip() for line in verdict.splitlines() if "127.0.0.1" in line]

    def test_intermediate(self) -> None:
        """
        By default: TLS 1.2 and 1.3 only, a client certificate required,
        Mozilla "intermediate" suites (AEAD, forward secrecy), no
        compression, secure renegotiation only, no Heartbleed or CCS
        injection, TLS_FALLBACK_SCSV; compliant with Mozilla's intermediate
        profile, with no deviation (the groups too: X448 and P-521, which
        OpenSSL would offer, are not).
        """
        verdict = self.check("intermediate", {"tls_1_2", "tls_1_3"})
        print("\nsslyze, intermediate:", *verdict, sep="\n  ")

    def test_modern(self) -> None:
        """
        With C{--tls-min-version 1.3}: TLS 1.3 only; compliant with Mozilla's
        modern profile, with no deviation.  That profile wants a server
        certificate of at most 90 days (the development PKI's lives 365): the
        daemon is given one of 89.
        """
        directory = self.workDirectory()
        DevelopmentPKI(os.path.join(directory, "mtlsd-pki")).init()
        certificate, key = writeCertificate(
            directory, "server89", os.path.join(directory, "mtlsd-pki"),
            notBefore=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5),
            days=89, usage=SERVER_AUTH, names=("localhost", "127.0.0.1"),
        )  # fmt: skip
        verdict = self.check(
            "modern", {"tls_1_3"}, "--tls-min-version", "1.3", "--cert", certificate,
            "--key", key, "--client-certs", "mtlsd-pki/ca.crt", directory=directory,
        )  # fmt: skip
        print("\nsslyze, modern:", *verdict, sep="\n  ")
