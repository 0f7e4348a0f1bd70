"""Writing minted device credentials where a factory can use them.

Two forms: a directory with `<id>.key.pem` (0600) and `<id>.cert.pem` per device, or one
archive (.tar, .tar.gz/.tgz, .zip) holding the same files. Both carry `manifest.csv` (id,
serial, thumbprints, expiry) for the factory's records and for enrollment lists. Both appear
all at once: the directory is staged and renamed, the archive written to a temporary file and
renamed, so an interrupted run leaves nothing that looks like a complete batch.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from iotdps.fsutil import atomic_write_many, staged_directory
from iotdps.pki.batch import MintedDevice

__all__ = ["DeviceSink", "open_device_sink", "write_device_files"]

_MANIFEST_HEADER = [
    "registration_id",
    "serial_number",
    "sha1_thumbprint",
    "sha256_thumbprint",
    "not_after_utc",
    "cert_file",
    "key_file",
]
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class DeviceSink(Protocol):
    def add(self, device: MintedDevice) -> None: ...


def _names(device: MintedDevice) -> tuple[str, str]:
    return f"{device.registration_id}.cert.pem", f"{device.registration_id}.key.pem"


def write_device_files(device: MintedDevice, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write one device's cert bundle and key into `directory`, together, never overwriting."""
    cert_name, key_name = _names(device)
    d = Path(directory)
    # Registration ids may contain ':' which some file systems refuse; the id rules forbid '/'.
    atomic_write_many({d / key_name: device.key_pem}, overwrite=False)
    try:
        atomic_write_many({d / cert_name: device.chain_pem}, mode=0o644, overwrite=False)
    except BaseException:
        (d / key_name).unlink(missing_ok=True)
        raise
    return d / cert_name, d / key_name


class _Manifest:
    def __init__(self) -> None:
        self.buf = io.StringIO()
        self.writer = csv.writer(self.buf, lineterminator="\n")
        self.writer.writerow(_MANIFEST_HEADER)

    def add(self, device: MintedDevice) -> None:
        cert_name, key_name = _names(device)
        self.writer.writerow(
            [
                device.registration_id,
                device.serial_number,
                device.sha1_thumbprint,
                device.sha256_thumbprint,
                device.not_after_utc,
                cert_name,
                key_name,
            ]
        )

    def data(self) -> bytes:
        return self.buf.getvalue().encode("utf-8")


class _DirectorySink:
    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.manifest = _Manifest()

    def add(self, device: MintedDevice) -> None:
        cert_name, key_name = _names(device)
        # Inside a private staging directory nobody else sees yet, so plain writes suffice; the
        # key is created 0600 from its first byte.
        fd = os.open(self.staging / key_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(device.key_pem)
        (self.staging / cert_name).write_bytes(device.chain_pem)
        self.manifest.add(device)

    def close(self) -> None:
        (self.staging / "manifest.csv").write_bytes(self.manifest.data())


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def tar_member(name: str, data: bytes, mode: int, mtime: int) -> bytes:
    """One regular-file member of a POSIX ustar archive: header block, data, zero padding.

    tarfile.addfile costs more CPU per member than minting the certificate in it; the header of
    a short name is a fixed layout, so it is built directly (tests read it back with tarfile).
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError("tar member name longer than 100 bytes")
    header = bytearray(512)
    header[0 : len(raw)] = raw
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(len(data), 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8  # checksum field counts as spaces while summing
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % 512)


class _ArchiveSink:
    """What tar and zip do alike: per device the key (0600) then the chain (0644), and the
    manifest as the last member; a subclass says how a member is written and the archive ended."""

    manifest: _Manifest

    def _put(self, name: str, data: bytes, mode: int) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def add(self, device: MintedDevice) -> None:
        cert_name, key_name = _names(device)
        self._put(key_name, device.key_pem, 0o600)
        self._put(cert_name, device.chain_pem, 0o644)
        self.manifest.add(device)

    def close(self) -> None:
        self._put("manifest.csv", self.manifest.data(), 0o644)
        self._end()


class _TarSink(_ArchiveSink):
    def __init__(self, fileobj: io.BufferedWriter, gz: bool) -> None:
        # compresslevel 1: keys are random and do not compress; certificates a little. Speed wins.
        self.raw = fileobj
        self.out: io.BufferedWriter | gzip.GzipFile = (
            gzip.GzipFile(fileobj=fileobj, mode="wb", compresslevel=1, mtime=0) if gz else fileobj
        )
        self.manifest = _Manifest()
        self.now = int(time.time())

    def _put(self, name: str, data: bytes, mode: int) -> None:
        self.out.write(tar_member(name, data, mode, self.now))

    def _end(self) -> None:
        self.out.write(b"\0" * 1024)  # end-of-archive marker: two zero blocks
        if self.out is not self.raw:
            self.out.close()  # flushes the gzip trailer; the raw file stays open for fsync


class _ZipSink(_ArchiveSink):
    def __init__(self, fileobj: io.BufferedWriter) -> None:
        self.zip = zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED)
        self.manifest = _Manifest()
        self.stamp = time.localtime()[:6]

    def _put(self, name: str, data: bytes, mode: int) -> None:
        info = zipfile.ZipInfo(name, date_time=self.stamp)
        info.external_attr = (0o100000 | mode) << 16  # regular file with Unix permissions
        self.zip.writestr(info, data)

    def _end(self) -> None:
        self.zip.close()


def is_archive(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


@contextlib.contextmanager
def open_device_sink(out: str | os.PathLike[str]) -> Iterator[DeviceSink]:
    """A sink for a batch: an archive if `out` ends in .tar/.tar.gz/.tgz/.zip, else a directory.

    `out` must not exist. The batch appears under `out` only if the block completes.
    """
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    if not is_archive(target):
        with staged_directory(target) as staging:
            sink = _DirectorySink(staging)
            yield sink
            sink.close()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            name = target.name.lower()
            archive: _TarSink | _ZipSink = (
                _ZipSink(fh) if name.endswith(".zip") else _TarSink(fh, gz=name.endswith((".gz", ".tgz")))
            )
            yield archive
            archive.close()
            fh.flush()
            os.fsync(fh.fileno())
        # The archive holds private keys: keep it 0600 like a key file.
        os.chmod(tmp, 0o600)
        if target.exists():
            raise FileExistsError(f"{target} already exists")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
