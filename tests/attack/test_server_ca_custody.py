"""The server CA's key in a PKCS#11 token: what must be refused (issue 20).

- A URI that carries the PIN or the module, in the configuration, the environment, the data
  dir's record (tls/server-ca.pkcs11) or `iotdps tls move-to-token`'s argument: refused in one
  line that does not repeat the PIN.
- A tampered record for `retire` that names another key in the token (a toolkit root's):
  nothing is destroyed, one error, the other key survives.
- `move-to-token` of a key file that is not the CA certificate's: refused before anything goes
  into the token or any file is deleted.

The token parts run in child processes with the token's environment (token_cli.py says why).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotdps.config import load_config
from iotdps.errors import ConfigError
from iotdps.server.ca_key import CaKeyPlace, ServerCaKeyError
from iotdps_testing.server import SRC
from iotdps_testing.token_cli import TokenCli, start_token_cli

pytestmark = pytest.mark.timeout(300)

LEAKED = "leaked-pin-31337"


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        (f"pkcs11:token=t;object=server-ca?pin-value={LEAKED}", "pin-value"),
        ("pkcs11:token=t;object=server-ca?pin-source=/run/pin", "pin-source"),
        ("pkcs11:token=t;object=server-ca?module-path=/tmp/evil.so", "module-path"),
        ("pkcs11:token=t;object=server-ca;type=cert", "type=cert"),
        ("pkcs11:token=t", "object="),
        ("https://example.com/key", "pkcs11"),
    ],
)
def test_configured_uri_with_a_pin_or_module_is_refused(uri: str, named: str, tmp_path: Path) -> None:
    for source in ("file", "env"):
        config = tmp_path / "c.toml"
        config.write_text(f'[tls]\nca_pkcs11_uri = "{uri}"\n' if source == "file" else "")
        env = {"IOTDPS_TLS_CA_PKCS11_URI": uri} if source == "env" else {}
        with pytest.raises(ConfigError) as caught:
            load_config(config, environ=env)
        assert "tls.ca_pkcs11_uri" in caught.value.message and named in caught.value.message
        assert LEAKED not in caught.value.message


def test_a_record_with_a_pin_is_refused_without_repeating_it(tmp_path: Path) -> None:
    place = CaKeyPlace(tmp_path)
    place.uri_file.write_text(f"pkcs11:token=t;object=server-ca?pin-value={LEAKED}\n")
    with pytest.raises(ServerCaKeyError) as caught:
        place.token_uri()
    assert "pin-value" in caught.value.message and LEAKED not in caught.value.message
    assert "\n" not in caught.value.message  # one line


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotdps", *args],
        env={**env, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_move_to_token_refuses_a_pin_in_its_argument(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTDPS_")}
    done = _run(
        ["tls", "move-to-token", "--data-dir", str(tmp_path), "--pkcs11-uri", f"pkcs11:object=x?pin-value={LEAKED}"],
        env,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error:") and "pin-value" in done.stderr and LEAKED not in done.stderr


# In a child: a server CA in the token, rotated and activated; another CA's key beside it.
_SETUP = """
import sys
from pathlib import Path
from iotdps.pki import KeySpec
from iotdps.pki.custody import create_token_key, token_key_uri
from iotdps.server.ca_rotation import activate, rotate
from iotdps.server.identity import ensure_server_identity
data_dir = Path(sys.argv[1])
ensure_server_identity(data_dir, ["localhost"], ca_pkcs11_uri="pkcs11:object=attack-server-ca")
create_token_key(token_key_uri("pkcs11:object=toolkit-root"), KeySpec.P256)
rotate(data_dir)
activate(data_dir)
print("ready")
"""


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> TokenCli:
    return start_token_cli(tmp_path_factory.mktemp("attack-hsm"), label="attack-hsm", user_pin="attack-pin-2468")


def _has_key(tc: TokenCli, label: str) -> bool:
    code = (
        "import os, sys, pkcs11\n"
        "lib = pkcs11.lib(os.environ['IOTDPS_PKCS11_MODULE'])\n"
        "tok = lib.get_token(token_label=os.environ['IOTDPS_PKCS11_TOKEN'])\n"
        "with tok.open(user_pin=os.environ['IOTDPS_PKCS11_PIN']) as s:\n"
        "    print(len(list(s.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY,"
        " pkcs11.Attribute.LABEL: sys.argv[1]}))))\n"
    )
    done = tc.python(code, label)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "1"


def test_retire_never_destroys_a_key_that_is_not_the_retired_cas(hsm: TokenCli, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    setup = hsm.python(_SETUP, str(data_dir))
    assert setup.returncode == 0 and "ready" in setup.stdout, setup.stderr
    retiring = data_dir / "tls" / "retiring" / "server-ca.pkcs11"
    assert "object=attack-server-ca" in retiring.read_text()
    # Tampered: the record of the key to destroy names the toolkit root's key instead.
    retiring.write_text("pkcs11:object=toolkit-root\n")
    done = hsm.run("tls", "retire", IOTDPS_DATA_DIR=str(data_dir))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "does not match the expected public key" in errors[0], done.stderr
    assert _has_key(hsm, "toolkit-root") and _has_key(hsm, "attack-server-ca")
    assert retiring.exists()  # the rotation is not declared over either


def test_move_to_token_refuses_a_key_file_that_is_not_the_cas(hsm: TokenCli, tmp_path: Path) -> None:
    from iotdps.server.identity import ensure_server_identity

    env = {"IOTDPS_SERVER_CA_PASSPHRASE": "attack-ca-passphrase-1"}
    first, other = tmp_path / "first", tmp_path / "other"
    ensure_server_identity(first, ["localhost"], env)
    ensure_server_identity(other, ["localhost"], env)
    swapped = (other / "tls" / "server-ca.key").read_bytes()
    (first / "tls" / "server-ca.key").write_bytes(swapped)  # another CA's key beside this certificate
    done = hsm.run(
        "tls", "move-to-token", "--pkcs11-uri", "pkcs11:object=swapped-ca", IOTDPS_DATA_DIR=str(first), **env
    )
    assert done.returncode == 2 and "is not the key of the server CA certificate" in done.stderr, done.stderr
    assert (first / "tls" / "server-ca.key").read_bytes() == swapped  # nothing deleted
    assert not (first / "tls" / "server-ca.pkcs11").exists() and not _has_key(hsm, "swapped-ca")
