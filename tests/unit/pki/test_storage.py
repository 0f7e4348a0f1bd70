"""Atomic output, the CA directory and bulk minting to files and archives."""

from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from iotdps.errors import AlreadyExists, BadPassphrase, NotFound
from iotdps.fsutil import atomic_write, atomic_write_many, staged_directory
from iotdps.pki import (
    CaDirectory,
    Validity,
    create_root_ca,
    explain_chain,
    generate_private_key,
    load_certificates,
    load_private_key,
    mint_devices,
    mint_packed,
    open_device_sink,
)
from iotdps.secret import Secret


class _Boom(bytes):
    """bytes that explode half-way through being written."""


def test_atomic_write_mode_and_no_leftovers(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "k.pem", b"secret")
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pem"]


def test_atomic_write_many_rolls_back(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "cert.pem").mkdir()  # renaming a file onto a directory fails
    with pytest.raises(OSError):
        atomic_write_many({tmp_path / "key.pem": b"k", blocker / "cert.pem": b"c"})
    assert not (tmp_path / "key.pem").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in blocker.iterdir()] == ["cert.pem"]


def test_atomic_write_failure_leaves_old_content(tmp_path: Path) -> None:
    target = tmp_path / "c.pem"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pem"]


def test_staged_directory_vanishes_on_error(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    with pytest.raises(RuntimeError), staged_directory(out) as staging:
        (staging / "a").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_ca_directory(tmp_path: Path) -> None:
    cadir = CaDirectory(tmp_path / "ca")
    key = generate_private_key()
    cert = create_root_ca("R", key, Validity.days(10), path_length=1)
    rec = cadir.add("root", cert, key, Secret("pw"))
    assert rec.kind == "root" and rec.path_length == 1
    key_file = tmp_path / "ca" / rec.key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    issuer = cadir.issuer("root", Secret("pw"))
    assert issuer.certificate == cert and issuer.name == "root"
    with pytest.raises(BadPassphrase):
        cadir.issuer("root", Secret("nope"))
    with pytest.raises(AlreadyExists):
        cadir.add("root", cert, key, Secret("pw"))
    with pytest.raises(NotFound, match="known: root"):
        cadir.get("factory")
    with pytest.raises(NotFound):
        cadir.add("child", cert, key, Secret("pw"), parent="ghost")
    assert CaDirectory(tmp_path / "ca").default_root() == "root"
    assert [r.name for r in CaDirectory(tmp_path / "ca").records()] == ["root"]


@pytest.mark.parametrize("packed", [False, True], ids=["added", "packed"])
@pytest.mark.parametrize("name", ["batch", "batch.tar.gz", "batch.tar", "batch.zip"])
def test_mint_batch_outputs(hierarchy: Any, tmp_path: Path, name: str, packed: bool) -> None:
    ids = [f"dev-{i:03d}" for i in range(40)]
    out = tmp_path / name
    with open_device_sink(out) as sink:
        if packed:  # the workers pack their chunks (the CLI's way)
            for part in mint_packed(hierarchy.line, ids, Validity.days(30), sink.packer, workers=2, chunk=8):
                sink.add_packed(part)
        else:
            for chunk in mint_devices(hierarchy.line, ids, Validity.days(30), workers=2, chunk=8):
                for dev in chunk:
                    sink.add(dev)
    files: dict[str, bytes] = {}
    if name.endswith(".zip"):
        with zipfile.ZipFile(out) as z:
            files = {n: z.read(n) for n in z.namelist()}
            assert (z.getinfo("dev-000.key.pem").external_attr >> 16) & 0o777 == 0o600
    elif ".tar" in name:
        with tarfile.open(out) as t:
            files = {m.name: t.extractfile(m).read() for m in t.getmembers()}  # type: ignore[union-attr]
            assert t.getmember("dev-000.key.pem").mode == 0o600
            assert t.getnames()[-1] == "manifest.csv"
        # GNU tar reads it too: a .tar.gz is one gzip member per chunk, concatenated.
        listing = subprocess.run(["tar", "-tvf", str(out)], check=True, capture_output=True, text=True).stdout
        assert len(listing.splitlines()) == 2 * len(ids) + 1
        assert listing.splitlines()[0].startswith("-rw-------")
    else:
        files = {p.name: p.read_bytes() for p in out.iterdir()}
        assert stat.S_IMODE((out / "dev-000.key.pem").stat().st_mode) == 0o600
    assert len(files) == 2 * len(ids) + 1
    rows = list(csv.DictReader(io.StringIO(files["manifest.csv"].decode())))
    assert [r["registration_id"] for r in rows] == ids
    for rid in (ids[0], ids[-1]):
        certs = load_certificates(files[f"{rid}.cert.pem"])
        key = load_private_key(files[f"{rid}.key.pem"], None)
        report = explain_chain(certs[0], certs[1:], [hierarchy.root_cert], public_key=key.public_key())
        assert report.valid, report.explain()
        assert certs[0].subject.rfc4514_string() == f"CN={rid}"
    assert len({r["serial_number"] for r in rows}) == len(ids)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mint_encrypted_device_keys(hierarchy: Any) -> None:
    (dev,) = next(mint_devices(hierarchy.line, ["d-1"], Validity.days(3), device_passphrase=Secret("dpw")))
    assert b"ENCRYPTED" in dev.key_pem
    key = load_private_key(dev.key_pem, Secret("dpw"))
    assert key.public_key() == load_certificates(dev.chain_pem)[0].public_key()
    assert "BEGIN" not in repr(dev)


def test_batch_validates_all_ids_up_front(hierarchy: Any) -> None:
    from iotdps.errors import InvalidInput

    with pytest.raises(InvalidInput):
        list(mint_devices(hierarchy.line, ["ok-1", "bad id"], Validity.days(3)))
    with pytest.raises(InvalidInput, match="more than once"):
        list(mint_devices(hierarchy.line, ["ok-1", "ok-1"], Validity.days(3)))


def test_sink_refuses_existing_output(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError), open_device_sink(tmp_path / "b"):
        pass
    os.rmdir(tmp_path / "b")
