"""The seed's four commands run bare (issue 17): the defaults that let `create-ca-root`,
`proof-ca-root-possession`, `create-ca-intermediate` and `create-device-cert` do their job with
no arguments.

    a service is configured     --server / IOTDPS_CONNECTION_STRING, --dsn, or a local data dir
                                that already holds a database (a bare command never creates one)
    an intermediate's name      intermediate-<6 hex>, under the only root
    a device's registration id  device-<8 hex>, under the newest intermediate
"""

from __future__ import annotations

import secrets
from pathlib import Path

from iotdps.cli.target import server_target, target_params
from iotdps.errors import InvalidInput
from iotdps.pki import CaDirectory

__all__ = ["generated_ca_name", "generated_registration_id", "newest_intermediate", "service_configured"]


def service_configured() -> bool:
    """Whether the command's options (or the environment) name a provisioning service."""
    from iotdps.paths import DB_FILE_NAME, default_data_dir

    params = target_params()
    if server_target(params) is not None or params.get("dsn"):
        return True
    data_dir = Path(params["data_dir"]) if params.get("data_dir") else default_data_dir()
    return (data_dir / DB_FILE_NAME).exists()


def generated_ca_name(cadir: CaDirectory) -> str:
    taken = {r.name for r in cadir.records()}
    for _ in range(100):  # 16.7 million names: a clash is not expected, a loop must still end
        name = f"intermediate-{secrets.token_hex(3)}"
        if name not in taken:
            return name
    raise InvalidInput("could not find a free intermediate name; give one with --name")


def generated_registration_id() -> str:
    return f"device-{secrets.token_hex(4)}"


def newest_intermediate(cadir: CaDirectory) -> str:
    """The intermediate created last (its certificate file is the newest), else the only root."""
    intermediates = [r for r in cadir.records() if r.kind != "root"]
    if not intermediates:
        if not cadir.records():
            raise InvalidInput("the CA directory is empty: run `iotdps create-ca-root` first")
        return cadir.default_root()

    def written(name: str, cert_file: str) -> tuple[int, str]:
        return ((cadir.path / cert_file).stat().st_mtime_ns, name)

    return max(intermediates, key=lambda r: written(r.name, r.cert_file)).name
