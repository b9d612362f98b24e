# -*- test-case-name: mtlsd.test.test_httpidentity -*-
"""
What the HTTP forwarding mode tells a backend about the client, in request
headers: the certificate and its chain (RFC 9440), the address (RFC 7239 and
the X-Forwarded-* headers), Envoy's X-Forwarded-Client-Cert, and plain
headers of chosen identity fields; and which headers a client may therefore
not send itself.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.interfaces import IAddress

from ._errors import ConfigurationError
from ._identity import PeerIdentity, identityFromCertificate

Header = tuple[bytes, bytes]

# The headers mtlsd sets: a client's own copies never reach the backend.
CLIENT_CERT = b"client-cert"
CLIENT_CERT_CHAIN = b"client-cert-chain"
XFCC = b"x-forwarded-client-cert"
ALWAYS_SET = (
    CLIENT_CERT,
    CLIENT_CERT_CHAIN,
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"forwarded",
)

# Headers an --identity-header may not name: the message's framing and
# routing, and the headers above.
_RESERVED = frozenset(
    {
        *ALWAYS_SET,
        XFCC,
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
    }
)

CLIENT_CERT_HEADERS = ("rfc9440", "xfcc")

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _notAfter(identity: PeerIdentity) -> tuple[str, ...]:
    return (identity.notAfter.strftime("%Y-%m-%dT%H:%M:%SZ"),)


# The fields of --identity-header NAME=FIELD: each gives the field's values.
IDENTITY_FIELDS: dict[str, Callable[[PeerIdentity], tuple[str, ...]]] = {
    "cn": lambda i: () if i.commonName is None else (i.commonName,),
    "subject": lambda i: (i.subject,),
    "issuer": lambda i: (i.issuer,),
    "serial": lambda i: (f"{i.serial:x}",),
    "fingerprint": lambda i: (i.fingerprint,),
    "spki": lambda i: (i.spkiFingerprint,),
    "uri": lambda i: i.uris,
    "dns": lambda i: i.dnsNames,
    "email": lambda i: i.emails,
    "not-after": _notAfter,
}


def headerName(name: bytes) -> bytes:
    """
    A header name as mtlsd compares it: lowercase, C{_} as C{-} (CGI and
    WSGI servers give C{Client_Cert} and C{Client-Cert} the same name,
    C{HTTP_CLIENT_CERT}, so a client must not slip one past as the other).
    """
    return name.lower().replace(b"_", b"-")


def headerValue(text: str) -> bytes:
    """
    A certificate's text as a header value: printable ASCII as it is, any
    other character (a control character, a non-ASCII letter) and C{%}
    percent-encoded in UTF-8 (RFC 3986), so that a value never breaks the
    header and decodes without loss (C{urllib.parse.unquote}).
    """
    if all(" " <= c <= "~" and c != "%" for c in text):
        return text.encode("ascii")
    return "".join(
        c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
        for c in text
    ).encode("ascii")


def byteSequence(der: bytes) -> bytes:
    """
    A structured-field byte sequence (RFC 8941): C{:base64:}, standard
    base64 with padding, no line breaks.
    """
    return b":" + base64.b64encode(der) + b":"


def _xfccValue(value: str) -> str:
    # Envoy's rule: a value holding , ; = or " is quoted; quotes (and
    # backslashes) inside are escaped, so a name cannot forge a field.
    if any(c in value for c in ',;="\\'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc(certificate: x509.Certificate, identity: PeerIdentity) -> bytes:
    """
    Envoy's C{X-Forwarded-Client-Cert} for a direct client (its
    C{SANITIZE_SET} with the Subject, URI and DNS details):
    C{Hash=<sha256 hex>;Subject="<RFC 4514>";URI=<uri>;DNS=<dns>}, a URI
    and a DNS pair per name (C{URI=} when there is none).
    """
    subject = identity.subject.replace("\\", "\\\\").replace('"', '\\"')
    parts = [f"Hash={identity.fingerprint}", f'Subject="{subject}"']
    parts += [f"URI={_xfccValue(uri)}" for uri in identity.uris] or ["URI="]
    parts += [f"DNS={_xfccValue(name)}" for name in identity.dnsNames]
    return headerValue(";".join(parts))


def _clientIP(address: IAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(getattr(address, "host", ""))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # an IPv4 client of a dual-stack socket
    return ip


def forwardedHeaders(client: IAddress) -> list[Header]:
    """
    C{X-Forwarded-For} (mtlsd is the first hop: the client's address
    alone), C{X-Forwarded-Proto: https} and C{Forwarded} (RFC 7239: an IPv6
    address bracketed and quoted; a client without an IP address, on a UNIX
    socket, is C{for=unknown} and has no C{X-Forwarded-For}).
    """
    ip = _clientIP(client)
    if ip is None:
        return [(b"X-Forwarded-Proto", b"https"), (b"Forwarded", b"for=unknown;proto=https")]
    node = f'"[{ip}]"' if ip.version == 6 else str(ip)
    return [
        (b"X-Forwarded-For", str(ip).encode()),
        (b"X-Forwarded-Proto", b"https"),
        (b"Forwarded", f"for={node};proto=https".encode()),
    ]


def parseIdentityHeader(entry: str) -> tuple[str, str]:
    """
    Read C{--identity-header NAME=FIELD}.

    @raise ConfigurationError: for a malformed entry, an unknown field, or a
        header mtlsd sets itself or that frames the request.
    """
    name, equals, field = entry.partition("=")
    fields = ", ".join(IDENTITY_FIELDS)
    if not equals or not _TOKEN.fullmatch(name) or field not in IDENTITY_FIELDS:
        raise ConfigurationError(
            f"--identity-header {entry}: give NAME=FIELD, NAME a header name and FIELD one of"
            f" {fields}."
        )
    if headerName(name.encode()) in _RESERVED:
        raise ConfigurationError(
            f"--identity-header {entry}: mtlsd sets or needs the {name} header itself; choose"
            " another name (such as X-Client-CN)."
        )
    return name, field


@frozen
class HTTPIdentity:
    """
    The identity headers of the HTTP forwarding mode.

    @ivar xfcc: whether Envoy's C{X-Forwarded-Client-Cert} is set too.
    @ivar fields: the C{--identity-header} pairs: header name, field.
    """

    xfcc: bool = False
    fields: tuple[tuple[str, str], ...] = ()

    @classmethod
    def fromOptions(cls, clientCertHeader: str | None, entries: Sequence[str]) -> HTTPIdentity:
        """
        @raise ConfigurationError: for a bad C{--client-cert-header} or
            C{--identity-header}.
        """
        if clientCertHeader not in (None, *CLIENT_CERT_HEADERS):
            raise ConfigurationError(
                f"--client-cert-header must be rfc9440 or xfcc, not {clientCertHeader!r}."
            )
        return cls(clientCertHeader == "xfcc", tuple(parseIdentityHeader(e) for e in entries))

    def stripped(self) -> frozenset[bytes]:
        """
        The header names (as L{headerName} gives them) removed from every
        client request: all the headers this mode may set.
        """
        names = {*ALWAYS_SET, XFCC, *(headerName(name.encode()) for name, _ in self.fields)}
        return frozenset(names)

    def headers(
        self,
        certificate: x509.Certificate,
        chain: Iterable[x509.Certificate],
        client: IAddress,
    ) -> list[Header]:
        """
        The headers added to each request of a client.

        @param certificate: its certificate.
        @param chain: the intermediates it sent (remembered for a resumed
            session).
        @param client: its address.
        """
        headers = [(b"Client-Cert", byteSequence(certificate.public_bytes(Encoding.DER)))]
        sent = [byteSequence(c.public_bytes(Encoding.DER)) for c in chain]
        if sent:
            headers.append((b"Client-Cert-Chain", b", ".join(sent)))
        headers += forwardedHeaders(client)
        if self.xfcc or self.fields:
            identity = identityFromCertificate(certificate)
            if self.xfcc:
                headers.append((b"X-Forwarded-Client-Cert", xfcc(certificate, identity)))
            for name, field in self.fields:
                values = IDENTITY_FIELDS[field](identity)
                if values:
                    headers.append((name.encode(), headerValue(", ".join(values))))
        return headers
