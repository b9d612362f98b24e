# -*- test-case-name: mtlsd.test.test_cli -*-
"""
A development PKI: a CA, a server certificate and client certificates, made
with C{cryptography} and written as PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import idna
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ._errors import ConfigurationError
from ._files import loadCertificates, loadCRLs, loadPrivateKey

DEFAULT_PKI_DIR = "mtlsd-pki"
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
# Long enough that a development daemon does not start rejecting every client
# because nobody renewed the CRL (OpenSSL rejects past a CRL's nextUpdate).
DEV_CRL_DAYS = 3650

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH

Signer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def newKey() -> ec.EllipticCurvePrivateKey:
    """
    @return: a new ECDSA P-256 private key.
    """
    return ec.generate_private_key(ec.SECP256R1())


def _generalNames(
    names: Iterable[str], uris: Iterable[str], emails: Iterable[str]
) -> list[x509.GeneralName]:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    general.extend(x509.UniformResourceIdentifier(uri) for uri in uris)
    general.extend(x509.RFC822Name(email) for email in emails)
    # A name given twice (pki init's defaults include localhost) is listed
    # once, where it first came; DNS names compare without case, and IP
    # addresses as addresses (::1 is 0::1).
    unique: dict[object, x509.GeneralName] = {}
    for entry in general:
        key = (type(entry), entry.value.lower() if isinstance(entry, x509.DNSName) else entry.value)
        unique.setdefault(key, entry)
    return list(unique.values())


# RFC 3986: a scheme, a colon, then printable ASCII without spaces.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
# One DNS label (RFC 1123 letters, digits and hyphens, not at either end).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def checkURI(uri: str, option: str = "--uri") -> None:
    """
    @raise ConfigurationError: if C{uri} is not an absolute URI (one with a
        scheme, such as a SPIFFE ID).
    """
    if not _URI.fullmatch(uri):
        raise ConfigurationError(
            f"{option} {uri!r} is not a URI: it needs a scheme (as in spiffe://example.org/alice)"
            " and only printable ASCII, without spaces."
        )


def checkName(name: str, option: str = "--dns") -> None:
    """
    @raise ConfigurationError: if C{name} is neither an IP address nor a DNS
        name in ASCII (a wildcard C{*.} first label allowed).
    """
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    if not name.isascii():
        try:
            suggestion = f"; use its IDNA form {idna.encode(name).decode()}"
        except idna.IDNAError:
            suggestion = ""
        raise ConfigurationError(f"{option} {name!r} is not an ASCII DNS name{suggestion}.")
    labels = name.removeprefix("*.").split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigurationError(
            f"{option} {name!r} is not a DNS name or IP address (a DNS name is letters, digits"
            " and hyphens in dot-separated labels; a wildcard only as the first label, as in"
            " *.example.com)."
        )


def makeCertificate(
    commonName: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Signer | None = None,
    *,
    isCA: bool = False,
    usages: Sequence[x509.ObjectIdentifier] = (),
    names: Iterable[str] = (),
    uris: Iterable[str] = (),
    emails: Iterable[str] = (),
    organizationalUnit: str | None = None,
    notBefore: datetime.datetime | None = None,
    days: int = 365,
    ocspURL: str | None = None,
) -> x509.Certificate:
    """
    Make an X.509 certificate.

    @param commonName: the subject's CN.
    @param key: the subject's private key.
    @param issuer: the issuing CA's certificate and key, or L{None} for a
        self-signed certificate.
    @param isCA: make a CA certificate (basicConstraints CA, keyCertSign).
    @param usages: extended key usages; none means no EKU extension.
    @param names: DNS names and IP addresses for the subjectAltName.
    @param uris: URIs for the subjectAltName.
    @param emails: e-mail addresses for the subjectAltName.
    @param organizationalUnit: an OU for the subject.
    @param notBefore: start of validity (default: one hour ago).
    @param days: length of validity in days.
    @param ocspURL: the OCSP responder to name in its Authority Information
        Access extension.
    @return: the certificate.
    """
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, commonName)]
    if organizationalUnit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organizationalUnit))
    subject = x509.Name(attributes)
    issuerName, signingKey = (
        (subject, key)
        if issuer is None
        else (
            issuer[0].subject,
            issuer[1],
        )
    )
    start = notBefore or datetime.datetime.now(datetime.timezone.utc) - (
        datetime.timedelta(hours=1)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=isCA, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=isCA,
                crl_sign=isCA,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if ocspURL:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocspURL)
                    )
                ]
            ),
            critical=False,
        )
    general = _generalNames(names, uris, emails)
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return builder.sign(signingKey, hashes.SHA256())


def makeCRL(
    issuer: Signer,
    revoked: Iterable[x509.Certificate | int] = (),
    days: float = 30,
    lastUpdate: datetime.datetime | None = None,
) -> x509.CertificateRevocationList:
    """
    Make a CRL signed by C{issuer} listing C{revoked} (certificates or serial
    numbers), valid C{days} from C{lastUpdate} (default: five minutes ago).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    start = lastUpdate or now - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer[0].subject)
        .last_update(start)
        .next_update(start + datetime.timedelta(days=days))
    )
    for entry in revoked:
        serial = entry if isinstance(entry, int) else entry.serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(min(now, start + datetime.timedelta(seconds=1)))
            .build()
        )
    return builder.sign(issuer[1], hashes.SHA256())


def certificatePEM(*certificates: x509.Certificate) -> bytes:
    """
    @return: the certificates as one PEM bundle.
    """
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    """
    @return: the key as unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _writeFile(path: Path, data: bytes, secret: bool = False) -> None:
    """
    Write C{data} to C{path} (mode 0600 if C{secret}, else 0644) through a new
    temporary file renamed into place, so a reader never sees half a file and
    a stale or planted file cannot lend its permissions.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if secret else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


# Files of the PKI itself, which "pki issue" must never overwrite.
_RESERVED = frozenset({"ca", "crl", "server", "client", "ocsp"})
OCSP_SIGNING = ExtendedKeyUsageOID.OCSP_SIGNING


def _indexTime(moment: datetime.datetime) -> str:
    """
    A time as OpenSSL's C{index.txt} writes it (UTCTime until 2050).
    """
    return moment.strftime("%y%m%d%H%M%SZ" if moment.year < 2050 else "%Y%m%d%H%M%SZ")


@contextmanager
def _fileErrors(directory: Path) -> Iterator[None]:
    """
    Turn a failure to write the PKI's files into a L{ConfigurationError}.
    """
    try:
        yield
    except OSError as e:
        raise ConfigurationError(
            f"cannot write the PKI in {directory}: {e.strerror or e}."
        ) from None


class DevelopmentPKI:
    """
    The files of a development PKI in one directory, as written by
    C{mtlsd pki init}: C{ca.crt ca.key server.crt server.key client.crt
    client.key crl.pem}; with an OCSP responder URL (C{ocsp-url}), also
    the responder's C{ocsp.crt ocsp.key} and its C{index.txt}.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        """
        @return: the path of file C{name} in this PKI.
        """
        return self.directory / name

    def exists(self) -> bool:
        """
        @return: whether this PKI has its CA, server and client files.
        """
        return all(
            self.path(name).exists()
            for name in (
                "ca.crt",
                "server.crt",
                "server.key",
                "client.crt",
                "client.key",
            )
        )

    def init(self, serverNames: Sequence[str] = (), ocspURL: str | None = None) -> None:
        """
        Create what is missing of the CA, the server certificate (valid for
        localhost, 127.0.0.1, ::1 and C{serverNames}), the client
        certificate C{client} and an empty CRL.  Existing files are kept; an
        existing CA is never replaced.

        With C{ocspURL}, the certificates issued from now on name that OCSP
        responder, which signs with C{ocsp.crt} (issued by the CA for OCSP
        signing) and serves C{index.txt} (see L{writeIndex}).

        @raise ConfigurationError: if only half of the CA (certificate or
            key) is there, a server name is not a DNS name or IP address, or
            a file cannot be written.
        """
        for serverName in serverNames:
            checkName(serverName, "--server-name")
        with _fileErrors(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
            ca, caKey = self.path("ca.crt"), self.path("ca.key")
            if ca.exists() != caKey.exists():
                raise ConfigurationError(
                    f"{self.directory} has only one of ca.crt and ca.key; restore the"
                    " other or remove both to make a new CA."
                )
            if not ca.exists():
                key = newKey()
                certificate = makeCertificate("mtlsd development CA", key, isCA=True, days=3650)
                _writeFile(caKey, keyPEM(key), secret=True)
                _writeFile(ca, certificatePEM(certificate))
            if ocspURL is not None:
                _writeFile(self.path("ocsp-url"), ocspURL.encode() + b"\n")
                if not self.path("ocsp.crt").exists():
                    self._writePair("ocsp", caSigned=True, usages=[OCSP_SIGNING])
            if not self.path("crl.pem").exists():
                crl = makeCRL(self._ca(), days=DEV_CRL_DAYS).public_bytes(
                    serialization.Encoding.PEM
                )
                _writeFile(self.path("crl.pem"), crl)
            if not (self.path("server.crt").exists() and self.path("server.key").exists()):
                self._writePair(
                    "server",
                    caSigned=True,
                    usages=[SERVER_AUTH],
                    names=[*DEFAULT_SERVER_NAMES, *serverNames],
                )
            if not (self.path("client.crt").exists() and self.path("client.key").exists()):
                self._writePair("client", caSigned=True, usages=[CLIENT_AUTH])
            if self.ocspURL():
                self.writeIndex()

    def ocspURL(self) -> str | None:
        """
        @return: the OCSP responder URL the certificates of this PKI name
            (C{pki init --ocsp-url}), if any.
        """
        try:
            return self.path("ocsp-url").read_text().strip() or None
        except OSError:
            return None

    def writeIndex(self) -> tuple[int, int]:
        """
        Write C{index.txt}, OpenSSL's certificate database, which C{openssl
        ocsp -index} serves: every certificate of this directory the CA
        issued, revoked if C{crl.pem} lists it.

        @return: how many certificates it lists, and how many are revoked.
        """
        ca = self._ca()[0]
        revoked: dict[int, datetime.datetime] = {}
        if self.path("crl.pem").exists():
            for crl in loadCRLs(self.path("crl.pem")):
                revoked.update((e.serial_number, e.revocation_date_utc) for e in crl)
        lines: dict[int, str] = {}
        for path in sorted(self.directory.glob("*.crt")):
            for certificate in loadCertificates(path, "certificate")[:1]:
                serial = certificate.serial_number
                if certificate.issuer != ca.subject or certificate == ca or serial in lines:
                    continue
                hexSerial = f"{serial:X}"
                hexSerial = "0" * (len(hexSerial) % 2) + hexSerial
                # Shown by openssl only; a field of its own, without tabs.
                subject = "/" + re.sub(r"[\x00-\x1f]", "?", certificate.subject.rfc4514_string())
                when = revoked.get(serial)
                lines[serial] = "\t".join(
                    (
                        "V" if when is None else "R",
                        _indexTime(certificate.not_valid_after_utc),
                        "" if when is None else _indexTime(when),
                        hexSerial,
                        "unknown",
                        subject,
                    )
                )
        with _fileErrors(self.directory):
            _writeFile(
                self.path("index.txt"), "".join(f"{line}\n" for line in lines.values()).encode()
            )
        return len(lines), sum(serial in revoked for serial in lines)

    def issue(
        self,
        name: str,
        *,
        selfSigned: bool = False,
        days: int = 365,
        dnsNames: Sequence[str] = (),
        uris: Sequence[str] = (),
        replace: bool = False,
    ) -> x509.Certificate:
        """
        Write C{NAME.crt} and C{NAME.key}: a client certificate signed by this
        PKI's CA, or self-signed.

        @param replace: overwrite an existing certificate of that name.
        @raise ConfigurationError: for a reserved or unusable name, an
            existing certificate (unless C{replace}), bad names or days.
        """
        if not name or "/" in name or name.startswith(".") or name in _RESERVED:
            raise ConfigurationError(f"{name!r} is not a usable certificate name.")
        if not 1 <= days <= 36500:
            raise ConfigurationError(f"--days must be from 1 to 36500, not {days}.")
        for dnsName in dnsNames:
            checkName(dnsName)
        for uri in uris:
            checkURI(uri)
        if self.path(f"{name}.crt").exists() and not replace:
            raise ConfigurationError(
                f"{self.path(name + '.crt')} exists; use --force to replace it."
            )
        with _fileErrors(self.directory):
            self.directory.mkdir(parents=True, exist_ok=True)
            certificate = self._writePair(
                name,
                caSigned=not selfSigned,
                usages=[CLIENT_AUTH],
                names=dnsNames,
                uris=uris,
                days=days,
            )
        if self.ocspURL() and not selfSigned:
            self.writeIndex()
        return certificate

    def revoke(self, name: str) -> x509.CertificateRevocationList:
        """
        Add C{NAME.crt} to this PKI's CRL and write C{crl.pem} anew; a daemon using the PKI picks it up at its next reload.

        @raise ConfigurationError: if there is no such certificate or this
            PKI's CA did not issue it.
        """
        certificate = loadCertificates(self.path(f"{name}.crt"), "certificate")[0]
        ca = self._ca()
        if certificate.issuer != ca[0].subject:
            raise ConfigurationError(
                f"{self.path(name + '.crt')} was not issued by this PKI's CA; a self-signed"
                " certificate is revoked by removing it from the trust bundle."
            )
        revoked: set[int] = {certificate.serial_number}
        if self.path("crl.pem").exists():
            for crl in loadCRLs(self.path("crl.pem")):
                revoked.update(entry.serial_number for entry in crl)
        crl = makeCRL(ca, sorted(revoked), days=DEV_CRL_DAYS)
        with _fileErrors(self.directory):
            _writeFile(self.path("crl.pem"), crl.public_bytes(serialization.Encoding.PEM))
        if self.ocspURL():
            self.writeIndex()
        return crl

    def _writePair(
        self,
        name: str,
        *,
        caSigned: bool,
        usages: Sequence[x509.ObjectIdentifier],
        names: Sequence[str] = (),
        uris: Sequence[str] = (),
        days: int = 365,
    ) -> x509.Certificate:
        issuer = self._ca() if caSigned else None
        key = newKey()
        ocspURL = self.ocspURL() if caSigned and OCSP_SIGNING not in usages else None
        try:
            certificate = makeCertificate(
                name, key, issuer, usages=usages, names=names, uris=uris, days=days, ocspURL=ocspURL
            )
        except ValueError as e:  # e.g. a name that is not valid IDNA
            raise ConfigurationError(f"cannot make certificate {name}: {e}") from None
        _writeFile(self.path(f"{name}.key"), keyPEM(key), secret=True)
        _writeFile(self.path(f"{name}.crt"), certificatePEM(certificate))
        return certificate

    def _ca(self) -> Signer:
        certificate = loadCertificates(self.path("ca.crt"), "CA certificate")[0]
        key = loadPrivateKey(self.path("ca.key"), "CA key")
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{self.path('ca.key')}: not an ECDSA key.")
        return certificate, key
