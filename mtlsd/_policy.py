# -*- test-case-name: mtlsd.test.test_policy -*-
"""
Who is allowed in, among the clients whose certificate verified: the one
place that decides, as a pure function of a L{PeerIdentity}.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable

from attrs import field, frozen

from ._errors import ConfigurationError
from ._identity import PeerIdentity


def _globPattern(pattern: str, separator: str) -> re.Pattern[str]:
    """
    Compile a glob where C{*} matches one label (DNS name, CN) or one path
    segment (URI), never across C{separator} and never empty, and C{**}
    matches one or more of them.
    """
    parts = re.split(r"(\*\*|\*)", pattern)
    regex = "".join(
        ".+" if part == "**" else f"[^{re.escape(separator)}]+" if part == "*" else re.escape(part)
        for part in parts
    )
    # ASCII-only case folding: no Kelvin sign matching a "k".
    flags = re.ASCII | (re.IGNORECASE if separator == "." else 0)
    return re.compile(regex + r"\Z", flags)


def fingerprint(value: str, option: str) -> str:
    """
    Normalise a SHA-256 fingerprint given as hex, with or without colons.

    @raise ConfigurationError: if it is not 32 bytes of hex.
    """
    normalised = value.replace(":", "").strip().lower()
    if len(normalised) != 64 or not set(normalised) <= set(string.hexdigits):
        raise ConfigurationError(
            f"{option} {value!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)."
        )
    return normalised


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigurationError(f"--allow-ip {value!r} is not an IP address or network.") from None


def _labelGlobs(values: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(_globPattern(v, ".") for v in values)


def _segmentGlobs(values: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(_globPattern(v, "/") for v in values)


def _networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(_network(v) for v in values)


def _certificateFingerprints(values: Iterable[str]) -> frozenset[str]:
    return frozenset(fingerprint(v, "--allow-fingerprint") for v in values)


def _keyFingerprints(values: Iterable[str]) -> frozenset[str]:
    return frozenset(fingerprint(v, "--allow-spki") for v in values)


def _strings(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


@frozen
class AllowPolicy:
    """
    An allow-list: a verified client is admitted when the list is empty or
    when any one entry matches its certificate.

    CN and DNS patterns match case-insensitively, C{*} within one label;
    URI patterns match C{*} within one path segment; C{**} matches any
    number of labels or segments.  IP entries are addresses or networks
    (CIDR) matched against the certificate's IP SANs.  Fingerprints are
    SHA-256 of the certificate (C{fingerprints}) or of its public key
    (C{spkiFingerprints}, which survive re-issuing for the same key).
    """

    commonNames: tuple[re.Pattern[str], ...] = field(default=(), converter=_labelGlobs)
    dnsNames: tuple[re.Pattern[str], ...] = field(default=(), converter=_labelGlobs)
    uris: tuple[re.Pattern[str], ...] = field(default=(), converter=_segmentGlobs)
    ipAddresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), converter=_networks
    )
    organizationalUnits: frozenset[str] = field(default=frozenset(), converter=_strings)
    fingerprints: frozenset[str] = field(default=frozenset(), converter=_certificateFingerprints)
    spkiFingerprints: frozenset[str] = field(default=frozenset(), converter=_keyFingerprints)

    @property
    def isEmpty(self) -> bool:
        """
        Whether no entry is given (every verified client is admitted).
        """
        return not any(
            (
                self.commonNames,
                self.dnsNames,
                self.uris,
                self.ipAddresses,
                self.organizationalUnits,
                self.fingerprints,
                self.spkiFingerprints,
            )
        )

    def allows(self, identity: PeerIdentity) -> bool:
        """
        @return: whether a client with this (verified) identity may in.
        """
        if self.isEmpty:
            return True

        def anyMatch(patterns: tuple[re.Pattern[str], ...], values: Iterable[str]) -> bool:
            return any(p.match(v) for p in patterns for v in values)

        addresses = [ipaddress.ip_address(a) for a in identity.ipAddresses]
        return (
            (identity.commonName is not None and anyMatch(self.commonNames, [identity.commonName]))
            or anyMatch(self.dnsNames, identity.dnsNames)
            or anyMatch(self.uris, identity.uris)
            or any(a in n for n in self.ipAddresses for a in addresses)
            or bool(self.organizationalUnits.intersection(identity.organizationalUnits))
            or identity.fingerprint in self.fingerprints
            or identity.spkiFingerprint in self.spkiFingerprints
        )


@frozen
class AllowKind:
    """
    One kind of allow-list entry, as the daemon's options, the C{mtls:}
    strings and the logs name it: adding a kind is adding its L{AllowPolicy}
    field, its match in L{AllowPolicy.allows} and a row of L{ALLOW_KINDS}.

    @ivar attribute: its field of L{AllowPolicy}.
    @ivar option: the daemon's (repeatable) option, e.g. C{allow-cn}.
    @ivar key: the C{mtls:} string's key (comma-separated), e.g. C{allowCN}.
    @ivar help: the option's help.
    @ivar identity: the L{PeerIdentity} attribute it matches, which the
        event of a client the allow-list refused carries.
    @ivar label: how text log lines name that attribute, e.g. C{CN}.
    @ivar jsonName: how JSON log lines name it, e.g. C{cn}.
    """

    attribute: str
    option: str
    key: str
    help: str
    identity: str
    label: str
    jsonName: str


# In the order the text lines name a refused client's attributes.
ALLOW_KINDS = (
    AllowKind(
        "commonNames",
        "allow-cn",
        "allowCN",
        "Admit clients whose CN matches (glob: * one label, ** any; repeatable).",
        "commonName",
        "CN",
        "cn",
    ),
    AllowKind(
        "fingerprints",
        "allow-fingerprint",
        "allowFingerprint",
        "Admit the certificate with this SHA-256 fingerprint (repeatable).",
        "fingerprint",
        "sha256",
        "fingerprint",
    ),
    AllowKind(
        "spkiFingerprints",
        "allow-spki",
        "allowSPKI",
        "Admit certificates whose public key has this SHA-256 (repeatable).",
        "spkiFingerprint",
        "spki",
        "spki_fingerprint",
    ),
    AllowKind(
        "uris",
        "allow-uri",
        "allowURI",
        "Admit clients with a matching URI SAN, e.g. a SPIFFE ID (glob: * one segment; repeatable).",
        "uris",
        "uri",
        "uris",
    ),
    AllowKind(
        "dnsNames",
        "allow-dns",
        "allowDNS",
        "Admit clients with a matching DNS name SAN (glob; repeatable).",
        "dnsNames",
        "dns",
        "dns_names",
    ),
    AllowKind(
        "ipAddresses",
        "allow-ip",
        "allowIP",
        "Admit clients with an IP SAN in this address or network (repeatable).",
        "ipAddresses",
        "ip",
        "ip_addresses",
    ),
    AllowKind(
        "organizationalUnits",
        "allow-ou",
        "allowOU",
        "Admit clients with this organizational unit (repeatable).",
        "organizationalUnits",
        "ou",
        "ous",
    ),
)
