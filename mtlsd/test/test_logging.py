"""
Tests for L{mtlsd._logging}: JSON lines and where the log goes.
"""

import json
import os
import signal

from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._logging import jsonLine, logObserver


class JSONLineTests(SynchronousTestCase):
    def test_connectionEvent(self) -> None:
        """
        An mtlsd event becomes one line of JSON with stable field names.
        """
        event = {
            "log_format": "closed {client}: CN={commonName} in={bytesIn} out={bytesOut}",
            "log_time": 0.5,
            "log_level": LogLevel.info,
            "mtlsdEvent": "closed",
            "client": "127.0.0.1:5000",
            "commonName": "alice",
            "bytesIn": 3,
            "bytesOut": 4,
            "duration": 0.25,
            "dnsNames": ("a.example",),
        }
        line = jsonLine(event)
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(
            json.loads(line),
            {
                "time": "1970-01-01T00:00:00.500+00:00",
                "level": "info",
                "event": "closed",
                "message": formatEvent(event),
                "client": "127.0.0.1:5000",
                "cn": "alice",
                "bytes_in": 3,
                "bytes_out": 4,
                "duration": 0.25,
                "dns_names": ["a.example"],
            },
        )

    def test_otherEvent(self) -> None:
        """
        Other events are C{log} events with their message; a newline in it
        stays inside the one line.
        """
        record = json.loads(jsonLine({"log_format": "two\nlines", "log_level": LogLevel.warn}))
        self.assertEqual(
            (record["event"], record["level"], record["message"]), ("log", "warn", "two\nlines")
        )


class ObserverTests(SynchronousTestCase):
    def test_levelAndFile(self) -> None:
        """
        The observer writes info and above, to the log file twistd would
        use; debug events are left out.
        """
        path = os.path.abspath(self.mktemp())
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        observer = logObserver("json", path, nodaemon=False)
        observer(
            {
                "log_format": "kept",
                "log_level": LogLevel.info,
                "log_time": 1.0,
                "log_namespace": "x",
            }
        )
        observer(
            {
                "log_format": "dropped",
                "log_level": LogLevel.debug,
                "log_time": 1.0,
                "log_namespace": "x",
            }
        )
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual([json.loads(line)["message"] for line in lines], ["kept"])


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


class TextLinesTests(SynchronousTestCase):
    def test_sameAsTwisted(self) -> None:
        """
        The text observer writes exactly what Twisted's
        L{textFileLogObserver} writes: mtlsd's events (one line or several),
        an event with a traceback, others with a system or none, and one
        whose format needs Twisted's formatter (a call).
        """
        import io
        import time

        from twisted.logger import textFileLogObserver
        from twisted.python.failure import Failure

        from mtlsd._logging import _TextLines

        now = time.time()
        base = {"log_time": now, "log_namespace": "mtlsd", "log_level": LogLevel.info}
        failure = Failure(ZeroDivisionError("division by zero"))
        events = [
            {**base, "log_format": "accepted {client}: CN={cn}", "client": "a:1", "cn": "x",
             "mtlsdEvent": "accepted"},
            {**base, "log_format": "two\nlines {n}", "n": 2, "mtlsdEvent": "warning"},
            {**base, "log_format": "failed", "mtlsdEvent": "reload-failed", "log_failure": failure},
            {**base, "log_format": "{f()}", "f": lambda: "called", "mtlsdEvent": "x"},
            {"log_format": "plain {x}", "x": 1, "log_time": now + 1.5, "log_system": "sys"},
            {"log_format": "no time"},
            {**base, "log_format": "", "mtlsdEvent": "x"},
            {**base, "log_format": "x", "log_system": Unprintable(), "mtlsdEvent": "x"},
            {"log_time": now},
        ]  # fmt: skip
        theirs, ours = io.StringIO(), io.StringIO()
        twisted, mtlsd = textFileLogObserver(theirs), _TextLines(ours)
        for event in events:
            twisted(event)
            mtlsd(event)
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertIn("called", ours.getvalue())
