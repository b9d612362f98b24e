# -*- test-case-name: mtlsd.test.test_files -*-
"""
Reading certificates and keys from PEM files, with errors that name the file
and the problem.  C{cryptography} does all the parsing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import ConfigurationError

T = TypeVar("T")

Path = str | os.PathLike[str]
"""
A file name, as text or a path object.
"""


def readFile(path: Path, what: str) -> bytes:
    """
    @param what: what the file should hold, for the error message.
    @return: the contents of C{path}.
    @raise ConfigurationError: if it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigurationError(f"{what} file {path} is a directory.") from None
    except OSError as e:
        raise ConfigurationError(f"{what} file {path} cannot be read: {e.strerror}.") from None


def _parsePEM(
    data: bytes, source: str, label: str, what: str, parse: Callable[[bytes], T]
) -> list[T]:
    """
    Parse every PEM block of one type (C{label}, e.g. C{CERTIFICATE}) in
    C{data} with C{parse}.  Blocks of other types are ignored; a broken
    block, or a damaged BEGIN/END line, is an error, never silently skipped.
    """
    marker = b"-----BEGIN " + label.encode() + b"-----"
    starts = []
    position = data.find(marker)
    while position != -1:
        starts.append(position)
        position = data.find(marker, position + 1)
    if not starts:
        raise ConfigurationError(f"{source} holds no PEM {what}.")
    parsed = []
    for number, (start, end) in enumerate(zip(starts, [*starts[1:], len(data)], strict=True), 1):
        try:
            parsed.append(parse(data[start:end]))
        except ValueError as e:
            line = data.count(b"\n", 0, start) + 1
            reason = str(e).split(" See https://")[0].rstrip(".")
            raise ConfigurationError(
                f"{source}: {what} {number} (line {line}) is not a valid PEM {what} ({reason})."
            ) from None
    begins, ends = data.count(b"BEGIN " + label.encode()), data.count(b"END " + label.encode())
    if begins != len(parsed) or ends != len(parsed):
        raise ConfigurationError(
            f"{source} has {begins} BEGIN {label} and {ends} END {label} lines but"
            f" {len(parsed)} readable: a marker line is damaged."
        )
    return parsed


def parseCertificates(data: bytes, source: str) -> list[x509.Certificate]:
    """
    Parse every certificate of a PEM bundle (other blocks, such as a private
    key after the certificate, are ignored).

    @param source: the file name (or another label) for the error message.
    @raise ConfigurationError: if there is no certificate or one is broken.
    """
    return _parsePEM(data, source, "CERTIFICATE", "certificate", _loadCertificate)


def _loadCertificate(data: bytes) -> x509.Certificate:
    """
    Load a PEM certificate and its extensions, which cryptography parses
    lazily: a malformed one is an error here, not later.
    """
    certificate = x509.load_pem_x509_certificate(data)
    try:
        certificate.extensions  # noqa: B018
    except Exception as e:
        raise ValueError(f"unreadable extensions: {e}") from None
    return certificate


def loadCRLs(path: Path) -> list[x509.CertificateRevocationList]:
    """
    Read the certificate revocation lists in a file: one or more PEM CRLs,
    or one DER CRL.

    @raise ConfigurationError: if the file cannot be read or holds no
        valid CRL.
    """
    data = readFile(path, "CRL")
    source = f"CRL file {path}"
    if b"-----BEGIN" in data:
        return _parsePEM(data, source, "X509 CRL", "CRL", x509.load_pem_x509_crl)
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise ConfigurationError(f"{source} holds no PEM or DER CRL.") from None


def loadCertificates(path: Path, what: str) -> list[x509.Certificate]:
    """
    Read every certificate in the PEM file at C{path}.

    @param what: what the file should hold, for the error message.
    @raise ConfigurationError: if the file cannot be read, holds no
        certificate or holds a broken one.
    """
    return parseCertificates(readFile(path, what), f"{what} file {path}")


def checkKeyMatches(
    certificate: x509.Certificate, key: PrivateKeyTypes, certificatePath: Path, keyPath: Path
) -> None:
    """
    @raise ConfigurationError: if C{key} is not the private key of
        C{certificate}.
    """
    if key.public_key() != certificate.public_key():
        raise ConfigurationError(
            f"key file {keyPath} does not match the certificate in {certificatePath}."
        )


def loadPrivateKey(path: Path, what: str) -> PrivateKeyTypes:
    """
    Read the (first) private key in the PEM file at C{path}.

    @raise ConfigurationError: if the file cannot be read, holds no private
        key, or holds an encrypted one.
    """
    data = readFile(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"{what} file {path} holds an encrypted private key; mtlsd needs it"
            f" unencrypted (openssl pkey -in {path} -out plain.key)."
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(f"{what} file {path} holds no usable PEM private key.") from None
