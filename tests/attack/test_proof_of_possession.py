"""Forged proof of possession, and a forged CA above a trust anchor.

Both rest on one signature check (`pki.certs.signed_by`). With that check reduced to
the issuer name and key-id comparison, the suite used to pass all the same: its only negative
proof-of-possession test used a CA with another name. Here every forgery gets the names right:
- a verification certificate whose CN is the outstanding code, whose issuer name and authority
  key id are the CA's, signed by another key: `iotdps ca verify` and the management API's
  verify must refuse it, and the CA must stay unverified;
- a fake "root" with the same subject and key id as the real issuer of a verified
  intermediate, given to a group as its signing certificate or uploaded as a CA: the chain of a
  device under that intermediate must not be extended through it, so the group must not match.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.iot.device import X509, ProvisioningDeviceClient
from azure.iot.device.exceptions import CredentialError
from click.testing import CliRunner
from cryptography import x509

from iotdps.cli.main import cli
from iotdps.errors import IotdpsError
from iotdps_testing.net import free_loopback_address
from iotdps_testing.server import RunningServer, start_server
from iotdps_testing.x509craft import Cert, make, new_key, write_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MGMT_PORT = 8443


@dataclass
class Service:
    server: RunningServer
    files: Path
    remote_env: dict[str, str]

    def cli(self, *args: str, remote: bool = False) -> tuple[int, str]:
        """Exit code and output; an error the CLI's edge turns into `error: ...` (main()) is
        reported here as exit code 1 and that line."""
        env = {**self.server.env, **(self.remote_env if remote else {})}
        result = CliRunner().invoke(cli, list(args), env=env)
        if isinstance(result.exception, IotdpsError):
            return 1, f"error: {result.exception.message}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    def ok(self, *args: str, remote: bool = False) -> str:
        code, output = self.cli(*args, remote=remote)
        assert code == 0, output
        return output


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("pop")
    server = start_server(tmp, address=free_loopback_address((8883, 443, MGMT_PORT)))
    try:
        policies = json.loads((server.data_dir / "access-policies.json").read_text())["policies"]
        key = next(p["primaryKey"] for p in policies if p["keyName"] == "provisioningserviceowner")
        remote_env = {
            "IOTDPS_CONNECTION_STRING": (
                f"HostName={server.address}:{MGMT_PORT};SharedAccessKeyName=provisioningserviceowner;"
                f"SharedAccessKey={key}"
            ),
            "IOTDPS_SERVER_CA": str(server.server_ca_path),
        }
        files = tmp / "files"
        files.mkdir()
        yield Service(server, files, remote_env)
    finally:
        assert server.stop() == 0, server.log()


def _key_id(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _is_verified(service: Service, name: str) -> bool:
    return bool(json.loads(service.ok("ca", "show", name))["properties"]["isVerified"])


@pytest.mark.parametrize("surface", ["cli", "api"])
def test_forged_verification_certificate_is_refused(service: Service, surface: str) -> None:
    remote = surface == "api"
    ca = make(f"pop-root-{surface}", None, ca=True)
    name = f"pop-root-{surface}"
    service.ok("ca", "upload", name, str(write_bundle(service.files / f"{name}.pem", [ca.cert])), remote=remote)
    code = service.ok("ca", "verification-code", name, remote=remote).splitlines()[0].strip()

    # Right CN (the code), right issuer name, right authority key id; another key signed it.
    forged = make(
        code,
        ca,
        authority_key_id=_key_id(ca.cert),
        issuer_name=ca.cert.subject,
        signing_key=new_key(),
        key_usage=None,
        eku=None,
    )
    assert forged.cert.issuer == ca.cert.subject and forged.cert.subject.rfc4514_string() == f"CN={code}"
    forged_file = write_bundle(service.files / f"forged-{surface}.pem", [forged.cert])
    exit_code, output = service.cli("ca", "verify", name, str(forged_file), remote=remote)
    assert exit_code != 0, output
    assert f"not signed by CA {name}" in output
    assert not _is_verified(service, name)

    # The code was still good: the CA's own signature over the same CN verifies it.
    genuine = make(code, ca, key_usage=None, eku=None)
    service.ok("ca", "verify", name, str(write_bundle(service.files / f"genuine-{surface}.pem", [genuine.cert])))
    assert _is_verified(service, name)


def _register(service: Service, device: Cert, above: list[x509.Certificate]) -> bool:
    directory = service.files / device.cn
    directory.mkdir()
    cert_file, key_file = device.write(directory, above)
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=service.server.address,
        registration_id=device.cn,
        id_scope=service.server.id_scope,
        x509=X509(str(cert_file), str(key_file)),
        server_verification_cert=service.server.server_ca,
    )
    try:
        return bool(client.register().status == "assigned")
    except CredentialError:
        return False


@pytest.mark.parametrize("how", ["group-signing-cert", "uploaded-ca"])
def test_forged_root_above_an_anchor_extends_nothing(service: Service, how: str) -> None:
    # The factory: a root the service never sees, and its line intermediate, uploaded and
    # verified (the trust anchor). No group names the line.
    real_root = make(f"real-root-{how}", None, ca=True)
    line = make(f"line-{how}", real_root, ca=True)
    line_name = f"line-{how}"
    line_file = write_bundle(service.files / f"{line_name}.pem", [line.cert])
    service.ok("ca", "upload", line_name, str(line_file), "--verified")

    # The forgery: the real root's subject and key id, another key, self-signed with it.
    fake_root = make(
        real_root.cn,
        None,
        ca=True,
        subject=real_root.cert.subject,
        subject_key_id=_key_id(real_root.cert),
        authority_key_id=_key_id(real_root.cert),
    )
    assert fake_root.cert.subject == line.cert.issuer
    fake_file = write_bundle(service.files / f"fake-root-{how}.pem", [fake_root.cert])
    group = f"forged-{how}"
    if how == "group-signing-cert":
        service.ok("group", "create", group, "--signing-cert", str(fake_file))
    else:
        service.ok("ca", "upload", f"fake-root-{how}", str(fake_file))
        service.ok("group", "create", group, "--ca-ref", f"fake-root-{how}")

    device = make(f"device-under-{how}", line)
    bundle = write_bundle(service.files / f"{device.cn}.bundle.pem", [device.cert, line.cert])
    code, explained = service.cli("explain", "--cert", str(bundle))
    assert code == 1 and "decision: refuse NO_ENROLLMENT" in explained, explained
    assert group not in explained, explained

    assert not _register(service, device, [line.cert])
    refusals = service.server.refusals(device.cn)
    assert refusals and refusals[0].reason == "NO_ENROLLMENT", refusals
    assert service.server.registration(device.cn) is None
