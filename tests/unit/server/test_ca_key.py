"""server/ca_key.py and its use by server/identity.py, where no token is touched: which custody
a data dir records, what a cluster's record holds, and the refusals that come before any login
(the token itself: tests/e2e/dps/test_server_ca_in_token.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotdps.server.ca_key import CaKeyPlace, ServerCaKeyError, adopt_shared_record, shared_key_record
from iotdps.server.identity import ensure_server_identity

ENV = {"IOTDPS_SERVER_CA_PASSPHRASE": "unit-ca-passphrase-1"}
URI = "pkcs11:token=iotdps;object=server-ca;type=private"


def _file_identity(data_dir: Path) -> CaKeyPlace:
    ensure_server_identity(data_dir, ["localhost"], ENV)
    return CaKeyPlace(data_dir / "tls")


def test_custody_and_the_clusters_record(tmp_path: Path) -> None:
    place = _file_identity(tmp_path)
    assert place.custody() == "file" and place.token_uri() is None
    record = shared_key_record(place)
    assert set(record) == {"key"} and "ENCRYPTED PRIVATE KEY" in record["key"]
    place.uri_file.write_text(URI + "\n")
    place.key_file.unlink()
    assert place.custody() == "token"
    assert shared_key_record(place) == {"pkcs11_uri": URI}  # the URI only, never a key


def test_a_joining_node_takes_the_records_custody(tmp_path: Path) -> None:
    place = _file_identity(tmp_path)
    assert adopt_shared_record(place, {"certificate": "...", "pkcs11_uri": URI}, joining=True)
    assert place.custody() == "token" and not place.key_file.exists()
    assert str(place.token_uri()) == URI
    assert not adopt_shared_record(place, {"certificate": "..."}, joining=True)  # names no key


def test_a_member_moved_without_the_database_is_refused(tmp_path: Path) -> None:
    place = _file_identity(tmp_path)
    key_pem = place.key_file.read_text()
    place.key_file.unlink()
    place.uri_file.write_text(URI + "\n")
    with pytest.raises(ServerCaKeyError) as caught:
        adopt_shared_record(place, {"certificate": "...", "key": key_pem}, joining=False)
    assert "iotdps tls move-to-token --dsn" in caught.value.message and "\n" not in caught.value.message
    assert not place.key_file.exists()  # the key file is not written back


def test_configured_token_while_the_key_is_a_file_is_refused_before_any_login(tmp_path: Path) -> None:
    _file_identity(tmp_path)
    with pytest.raises(ServerCaKeyError) as caught:
        ensure_server_identity(tmp_path, ["localhost"], ENV, ca_pkcs11_uri="pkcs11:object=server-ca")
    assert "iotdps tls move-to-token" in caught.value.message


def test_configured_token_other_than_the_recorded_one_is_refused(tmp_path: Path) -> None:
    place = _file_identity(tmp_path)
    place.key_file.unlink()
    place.uri_file.write_text(URI + "\n")
    with pytest.raises(ServerCaKeyError) as caught:
        ensure_server_identity(tmp_path, ["localhost"], ENV, ca_pkcs11_uri="pkcs11:token=other;object=server-ca")
    assert "'other'" in caught.value.message and "'iotdps'" in caught.value.message


def test_a_missing_key_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    place = _file_identity(tmp_path)
    place.key_file.unlink()
    (tmp_path / "tls" / "server.pem").unlink()  # a reissue is needed, and nothing can sign it
    with pytest.raises(ServerCaKeyError) as caught:
        ensure_server_identity(tmp_path, ["localhost"], ENV)
    assert "the server CA key is missing" in caught.value.message and "\n" not in caught.value.message


def test_without_the_module_the_token_ca_stops_in_one_line(tmp_path: Path) -> None:
    place = _file_identity(tmp_path)
    place.key_file.unlink()
    place.uri_file.write_text(URI + "\n")
    with pytest.raises(ServerCaKeyError) as caught:
        ensure_server_identity(tmp_path, ["localhost"], {})  # the environment names no module
    assert "IOTDPS_PKCS11_MODULE" in caught.value.message
