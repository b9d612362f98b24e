"""
Tests for L{mtlsd._events}: the one table of log events agrees with its
emitters, the README, the observers and the metrics.
"""

from __future__ import annotations

import os
import re
import string

from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.test.proto_helpers import EventLoggingObserver
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import mtlsd
from mtlsd._events import EVENTS, JSON_NAMES, emit
from mtlsd._metrics import Metrics

PACKAGE = os.path.dirname(os.path.abspath(mtlsd.__file__))
README = os.path.join(os.path.dirname(PACKAGE), "README.md")
# Fields of the text lines only, computed by their emitters.
TEXT_ONLY = {"uriText", "detail", "trustedText", "crlsText", "cutText", "checksText", "then"}


def sources() -> dict[str, str]:
    return {
        name: open(os.path.join(PACKAGE, name), encoding="utf-8").read()
        for name in sorted(os.listdir(PACKAGE))
        if name.endswith(".py")
    }


class TableTests(SynchronousTestCase):
    def test_everyEmittedEventIsInTheTable(self) -> None:
        """
        Every event mtlsd emits goes through L{emit} with a name of the
        table, and every name the code matches events on is in it.
        """
        emitted = set()
        for name, text in sources().items():
            if name != "_events.py":
                self.assertNotIn("mtlsdEvent=", text, name)
            emitted |= set(re.findall(r'emit\(\s*log,\s*"([^"]+)"', text))
            matched = re.findall(r'get\("mtlsdEvent"\)\s*==\s*"([^"]+)"', text)
            self.assertLessEqual(set(matched), set(EVENTS), name)
        self.assertEqual(emitted, set(EVENTS))

    def test_readmeListsTheTable(self) -> None:
        """
        The README's list of events is the table's.
        """
        if not os.path.exists(README):
            raise SkipTest("no README.md beside the package (an installed copy)")
        with open(README, encoding="utf-8") as f:
            readme = f.read()
        listed = re.search(r"`event`\n?\s*\(((?:`[a-z-]+`,\s*)+)or `log` for the rest\)", readme)
        assert listed is not None, "the README's list of events is not found"
        self.assertEqual(sorted(re.findall(r"`([a-z-]+)`", listed.group(1))), sorted(EVENTS))

    def test_fieldsAndTexts(self) -> None:
        """
        Each event's text names its own fields (or text-only ones); each
        field has a JSON name.
        """
        for event in EVENTS.values():
            named = {name for _, name, _, _ in string.Formatter().parse(event.text) if name}
            self.assertLessEqual(named, set(event.fields) | TEXT_ONLY, event.name)
            self.assertLessEqual(set(event.fields), set(JSON_NAMES), event.name)


class EmitTests(SynchronousTestCase):
    def test_levelAndText(self) -> None:
        """
        L{emit} logs the table's level and text, or those given.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        log = Logger(namespace="mtlsd")
        emit(log, "refused", client="192.0.2.1:1", limit="max-connections")
        emit(log, "rejected", level=LogLevel.debug, client="c", reason="r", detail="")
        first, second = events
        self.assertEqual(
            (first["log_level"], first["log_format"], first["mtlsdEvent"]),
            (LogLevel.info, EVENTS["refused"].text, "refused"),
        )
        self.assertEqual(second["log_level"], LogLevel.debug)

    def test_metricsFromTheTable(self) -> None:
        """
        Each metric of the table is published and moved by its event.
        """
        metrics = Metrics()
        for event in EVENTS.values():
            for metric in event.metrics:
                name = metric.name + ("_total" if metric.kind == "counter" else "")
                if metric.kind == "histogram":
                    name += "_count"
                labels = {label: source.lstrip("=") for label, source in metric.labels}
                fields: dict[str, object] = {s: s.lstrip("=") for _, s in metric.labels}
                fields.update({str(metric.amount): 2.0} if isinstance(metric.amount, str) else {})
                before = metrics.registry.get_sample_value(name, labels) or 0
                metrics({"mtlsdEvent": event.name, **fields})
                after = metrics.registry.get_sample_value(name, labels)
                self.assertIsNotNone(after, (event.name, name))
                self.assertNotEqual(before, after, (event.name, name))
