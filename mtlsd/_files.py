# -*- test-case-name: mtlsd.test.test_files -*-
"""
Reading certificates and keys from PEM files, with errors that name the file
and the problem.  C{cryptography} does all the parsing.
"""

from __future__ import annotations

import os

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import ConfigurationError

_CERTIFICATE_MARKER = b"-----BEGIN CERTIFICATE-----"

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


def parseCertificates(data: bytes, source: str) -> list[x509.Certificate]:
    """
    Parse every certificate of a PEM bundle.  Blocks of other types (a
    private key after the certificate) are ignored; a broken certificate
    block is an error, never silently skipped.

    @param source: the file name (or another label) for the error message.
    @raise ConfigurationError: if there is no certificate or one is broken.
    """
    starts = []
    position = data.find(_CERTIFICATE_MARKER)
    while position != -1:
        starts.append(position)
        position = data.find(_CERTIFICATE_MARKER, position + 1)
    if not starts:
        raise ConfigurationError(f"{source} holds no PEM certificate.")
    certificates = []
    for number, (start, end) in enumerate(zip(starts, [*starts[1:], len(data)], strict=True), 1):
        try:
            certificates.append(x509.load_pem_x509_certificate(data[start:end]))
        except ValueError as e:
            line = data.count(b"\n", 0, start) + 1
            reason = str(e).split(" See https://")[0].rstrip(".")
            raise ConfigurationError(
                f"{source}: certificate {number} (line {line}) is not a valid"
                f" PEM certificate ({reason})."
            ) from None
    # A damaged BEGIN or END line hides a certificate from the parser.
    begins, ends = data.count(b"BEGIN CERTIFICATE"), data.count(b"END CERTIFICATE")
    if begins != len(certificates) or ends != len(certificates):
        raise ConfigurationError(
            f"{source} has {begins} BEGIN CERTIFICATE and {ends} END CERTIFICATE"
            f" lines but {len(certificates)} readable certificates: a marker line is damaged."
        )
    return certificates


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
