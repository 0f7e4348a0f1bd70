"""Writing minted device credentials where a factory can use them.

Two forms: a directory with `<id>.key.pem` (0600) and `<id>.cert.pem` per device, or one
archive (.tar, .tar.gz/.tgz, .zip) holding the same files. Both carry `manifest.csv` (id,
serial, thumbprints, expiry) for the factory's records and for enrollment lists. Both appear
all at once: the directory is staged and renamed, the archive written to a temporary file and
renamed, so an interrupted run leaves nothing that looks like a complete batch.

A sink's `packer` turns a chunk of minted devices into a `PackedDevices` where they were
minted (mint_packed runs it in the worker processes): for a .tar or .tar.gz the archive members
themselves, a .tar.gz's as a gzip member of its own (gzip members concatenate into one valid
stream), so the parent only appends bytes and manifest rows.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import io
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from iotdps.fsutil import atomic_write_many, staged_directory
from iotdps.pki.batch import MintedDevice

__all__ = ["DeviceSink", "PackedDevices", "open_device_sink", "write_device_files"]

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


@dataclass(frozen=True, slots=True)
class PackedDevices:
    """A chunk of minted devices as its sink stores them: their manifest rows, and either the
    archive bytes to append (`blob`) or the devices themselves, for sinks that write each one."""

    rows: list[list[str]]
    blob: bytes | None = None
    devices: list[MintedDevice] | None = None

    def __len__(self) -> int:
        return len(self.rows)


class DeviceSink(Protocol):
    # Runs where the devices were minted; a module-level function or a partial of one.
    packer: Callable[[list[MintedDevice]], PackedDevices]

    def add(self, device: MintedDevice) -> None: ...

    def add_packed(self, packed: PackedDevices) -> None: ...


def _names(device: MintedDevice) -> tuple[str, str]:
    return f"{device.registration_id}.cert.pem", f"{device.registration_id}.key.pem"


def _row(device: MintedDevice) -> list[str]:
    cert_name, key_name = _names(device)
    return [
        device.registration_id,
        device.serial_number,
        device.sha1_thumbprint,
        device.sha256_thumbprint,
        device.not_after_utc,
        cert_name,
        key_name,
    ]


def pack_devices(devices: list[MintedDevice]) -> PackedDevices:
    """The devices as they are, for a sink that writes each one itself."""
    return PackedDevices([_row(d) for d in devices], devices=devices)


def pack_tar(devices: list[MintedDevice], *, mtime: int, gz: bool) -> PackedDevices:
    """The devices' tar members (key 0600, then chain 0644, per device), gzip-compressed as
    one gzip member when `gz`."""
    members = []
    for device in devices:
        cert_name, key_name = _names(device)
        members.append(tar_member(key_name, device.key_pem, 0o600, mtime))
        members.append(tar_member(cert_name, device.chain_pem, 0o644, mtime))
    return PackedDevices([_row(d) for d in devices], blob=_finish(b"".join(members), gz))


def _finish(data: bytes, gz: bool) -> bytes:
    # compresslevel 1: keys are random and do not compress; certificates a little. Speed wins.
    return gzip.compress(data, compresslevel=1, mtime=0) if gz else data


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
        self.writer.writerow(_row(device))

    def add_rows(self, rows: list[list[str]]) -> None:
        self.writer.writerows(rows)

    def data(self) -> bytes:
        return self.buf.getvalue().encode("utf-8")


class _EachDevice:
    """A sink that writes device by device in the parent (a directory, a zip archive)."""

    packer: Callable[[list[MintedDevice]], PackedDevices] = staticmethod(pack_devices)

    def add(self, device: MintedDevice) -> None:
        raise NotImplementedError

    def add_packed(self, packed: PackedDevices) -> None:
        assert packed.devices is not None, "packed by another sink's packer"
        for device in packed.devices:
            self.add(device)


class _DirectorySink(_EachDevice):
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


@functools.lru_cache(maxsize=16)
def _tar_header_base(mode: int, mtime: int) -> tuple[bytes, int]:
    """A ustar header with every field but the name, the size and the checksum filled in (those
    are zeros, the checksum spaces, as it is summed), and the sum of its bytes."""
    header = bytearray(512)
    header[100:108] = _octal(mode, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"
    return bytes(header), sum(header)


def tar_member(name: str, data: bytes, mode: int, mtime: int) -> bytes:
    """One regular-file member of a POSIX ustar archive: header block, data, zero padding.

    tarfile.addfile costs more CPU per member than minting the certificate in it; the header of
    a short name is a fixed layout, so it is built directly from a template per mode and mtime,
    its checksum from the template's sum plus the name's and the size's bytes (tests read it
    back with tarfile and GNU tar).
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError("tar member name longer than 100 bytes")
    base, base_sum = _tar_header_base(mode, mtime)
    size = _octal(len(data), 12)
    header = bytearray(base)
    header[0 : len(raw)] = raw
    header[124:136] = size
    header[148:156] = b"%06o\0 " % (base_sum + sum(raw) + sum(size))
    return bytes(header) + data + b"\0" * (-len(data) % 512)


class _TarSink:
    """A .tar or .tar.gz: members arrive packed (pack_tar), the manifest is the last member."""

    def __init__(self, fileobj: io.BufferedWriter, gz: bool) -> None:
        self.out = fileobj
        self.gz = gz
        self.manifest = _Manifest()
        self.mtime = int(time.time())
        self.packer: Callable[[list[MintedDevice]], PackedDevices] = functools.partial(
            pack_tar, mtime=self.mtime, gz=gz
        )

    def add(self, device: MintedDevice) -> None:
        self.add_packed(self.packer([device]))

    def add_packed(self, packed: PackedDevices) -> None:
        assert packed.blob is not None, "packed by another sink's packer"
        self.out.write(packed.blob)
        self.manifest.add_rows(packed.rows)

    def close(self) -> None:
        manifest = tar_member("manifest.csv", self.manifest.data(), 0o644, self.mtime)
        self.out.write(_finish(manifest + b"\0" * 1024, self.gz))  # end of archive: two zero blocks


class _ZipSink(_EachDevice):
    """Per device the key (0600) then the chain (0644), and the manifest as the last member."""

    def __init__(self, fileobj: io.BufferedWriter) -> None:
        self.zip = zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED)
        self.manifest = _Manifest()
        self.stamp = time.localtime()[:6]

    def _put(self, name: str, data: bytes, mode: int) -> None:
        info = zipfile.ZipInfo(name, date_time=self.stamp)
        info.external_attr = (0o100000 | mode) << 16  # regular file with Unix permissions
        self.zip.writestr(info, data)

    def add(self, device: MintedDevice) -> None:
        cert_name, key_name = _names(device)
        self._put(key_name, device.key_pem, 0o600)
        self._put(cert_name, device.chain_pem, 0o644)
        self.manifest.add(device)

    def close(self) -> None:
        self._put("manifest.csv", self.manifest.data(), 0o644)
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
