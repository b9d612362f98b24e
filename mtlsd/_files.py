# -*- test-case-name: mtlsd.test.test_files -*-
"""
Reading certificates and keys from PEM and PKCS#12 files, with errors that
name the file and the problem.  C{cryptography} does all the parsing.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Callable
from typing import TypeVar

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

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


def readPassphrase(path: Path) -> bytes:
    """
    Read a key passphrase: the first line of the file at C{path}, without
    its line ending (C{\\n} or C{\\r\\n}).  Other spaces are part of it.

    @raise ConfigurationError: if the file cannot be read or its first line
        is empty.
    """
    data = readFile(path, "passphrase")
    if not data:
        raise ConfigurationError(f"passphrase file {path} is empty.")
    passphrase = data.split(b"\n", 1)[0]
    if passphrase.endswith(b"\r"):
        passphrase = passphrase[:-1]
    if not passphrase:
        raise ConfigurationError(
            f"passphrase file {path} starts with an empty line (the passphrase is its first line)."
        )
    return passphrase


def _passphraseFrom(passphraseSource: Path | None) -> str:
    if passphraseSource is None:
        return "the given passphrase"
    return f"the passphrase from {passphraseSource}"


def loadPrivateKey(
    path: Path,
    what: str,
    passphrase: bytes | None = None,
    passphraseSource: Path | None = None,
) -> PrivateKeyTypes:
    """
    Read the (first) private key in the PEM file at C{path}.  An encrypted
    key is decrypted with C{passphrase}; an unencrypted one is used as it
    is, with or without a passphrase.

    @param what: what the file should hold, for the error message.
    @param passphrase: the passphrase of an encrypted key, if any.
    @param passphraseSource: the file C{passphrase} was read from, for the
        error message.
    @raise ConfigurationError: if the file cannot be read, holds no private
        key, or holds an encrypted one and no passphrase or a wrong one was
        given.
    """
    data = readFile(path, what)
    unusable = f"{what} file {path} holds no usable PEM private key."
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        pass
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigurationError(unusable) from None
    if not passphrase:
        raise ConfigurationError(
            f"{what} file {path} holds an encrypted private key: give its passphrase with"
            f" --key-passphrase-file (or decrypt it: openssl pkey -in {path} -out plain.key)."
        )
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        raise ConfigurationError(
            f"{what} file {path} cannot be decrypted with {_passphraseFrom(passphraseSource)}."
        ) from None
    except UnsupportedAlgorithm:
        raise ConfigurationError(unusable) from None


@frozen
class CertificateAndKey:
    """
    A certificate with its chain and private key, as read from files.

    @ivar certificate: the certificate.
    @ivar chain: the certificates sent after it.
    @ivar privateKey: its private key.
    @ivar keyPath: the file that holds the key: the key file, or the
        certificate file (PEM with the key, or PKCS#12).
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    privateKey: PrivateKeyTypes
    keyPath: Path


def loadCertificateAndKey(
    certificatePath: Path,
    keyPath: Path | None,
    role: str,
    passphrasePath: Path | None = None,
) -> CertificateAndKey:
    """
    Read a certificate, its chain and its key.

    The certificate file is PEM (the certificate, then its chain, then
    optionally the key) or, if it holds no PEM at all, PKCS#12 (key,
    certificate and chain in one file; then C{keyPath} must be L{None}).

    @param certificatePath: the certificate file.
    @param keyPath: the PEM key file, or L{None} for the key inside
        C{certificatePath}.
    @param role: C{"server"} or C{"client"}, for the error messages.
    @param passphrasePath: a file whose first line is the passphrase of an
        encrypted key or the password of the PKCS#12 file.
    @raise ConfigurationError: for any unusable file, a passphrase that does
        not open the key, or a key that does not match the certificate.
    """
    what = f"{role} certificate"
    passphrase = None if passphrasePath is None else readPassphrase(passphrasePath)
    data = readFile(certificatePath, what)
    if b"-----BEGIN" not in data:
        return _loadPKCS12(data, certificatePath, keyPath, role, passphrase, passphrasePath)
    certificate, *chain = parseCertificates(data, f"{what} file {certificatePath}")
    keyPath = certificatePath if keyPath is None else keyPath
    privateKey = loadPrivateKey(keyPath, f"{role} key", passphrase, passphrasePath)
    checkKeyMatches(certificate, privateKey, certificatePath, keyPath)
    return CertificateAndKey(certificate, tuple(chain), privateKey, keyPath)


def _loadPKCS12(
    data: bytes,
    path: Path,
    keyPath: Path | None,
    role: str,
    passphrase: bytes | None,
    passphrasePath: Path | None,
) -> CertificateAndKey:
    """
    Read the key, certificate and chain of a PKCS#12 file.  Like OpenSSL,
    a file without a password opens with or without a passphrase.
    """
    source = f"{role} certificate file {path}"
    try:
        try:
            key, certificate, chain = _openPKCS12(data, passphrase)
        except ValueError:
            if passphrase is None:
                raise
            key, certificate, chain = _openPKCS12(data, None)
    except ValueError as e:
        # cryptography says "Could not deserialize PKCS12 data" for what is
        # not PKCS#12, and "Invalid password or PKCS12 data" for a file it
        # could not decrypt or authenticate.
        if "deserialize" in str(e):
            raise ConfigurationError(
                f"{source} holds no PEM certificate and is not a PKCS#12 file."
            ) from None
        if keyPath is not None:
            raise _keyWithPKCS12(source, keyPath) from None
        if passphrase is None:
            raise ConfigurationError(
                f"{source} is a PKCS#12 file with a password: give it with --key-passphrase-file."
            ) from None
        raise ConfigurationError(
            f"{source} is a PKCS#12 file that {_passphraseFrom(passphrasePath)} does not open."
        ) from None
    if keyPath is not None:
        raise _keyWithPKCS12(source, keyPath)
    if certificate is None:
        raise ConfigurationError(f"{source} is a PKCS#12 file without a certificate.")
    if key is None:
        raise ConfigurationError(f"{source} is a PKCS#12 file without a private key.")
    if key.public_key() != certificate.public_key():
        raise ConfigurationError(
            f"{source} holds a private key that does not match its certificate."
        )
    return CertificateAndKey(certificate, tuple(chain), key, path)


def _openPKCS12(
    data: bytes, password: bytes | None
) -> tuple[PrivateKeyTypes | None, x509.Certificate | None, list[x509.Certificate]]:
    """
    L{pkcs12.load_key_and_certificates}, raising L{ValueError} for a
    password that is not UTF-8 too (cryptography 50 raises a broken
    L{TypeError} for it).
    """
    try:
        return pkcs12.load_key_and_certificates(data, password)
    except TypeError:
        raise ValueError("Invalid password") from None


def _keyWithPKCS12(source: str, keyPath: Path) -> ConfigurationError:
    return ConfigurationError(
        f"{source} is a PKCS#12 file, which holds the key: --key {keyPath} cannot be used with it."
    )


def keyFileWarnings(path: Path, what: str = "a private key") -> list[str]:
    """
    Check that a file holding a secret is readable by its owner only.

    @param what: what the file holds, for the warning.
    @return: a sentence saying so if group or others may read the file
        (with its mode and the command that fixes it); nothing otherwise,
        or if the file cannot be looked at.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return []
    readers = [
        name for bit, name in [(stat.S_IRGRP, "group"), (stat.S_IROTH, "others")] if mode & bit
    ]
    if not readers:
        return []
    return [
        f"{path} holds {what} and is readable by {' and '.join(readers)} (mode {mode:04o}):"
        f" restrict it with chmod 600 {shlex.quote(os.fspath(path))}."
    ]
