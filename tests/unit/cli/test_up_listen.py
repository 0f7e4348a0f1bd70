"""`iotdps up` as a new user meets it: as an ordinary user, with ports that cannot be bound.

A listener that cannot bind is one `error:` line naming the address and what to do, exit 2,
never a traceback (issue 17)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotdps_testing.net import free_loopback_address
from iotdps_testing.unprivileged import privileged_port_start, unprivileged_command, unprivileged_dir

SRC = Path(__file__).resolve().parents[3] / "src"


def _up(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotdps", "up", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
        timeout=timeout,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_a_privileged_port_as_an_ordinary_user_names_the_ways_out() -> None:
    port = 443
    if privileged_port_start() <= port:
        pytest.fail(f"net.ipv4.ip_unprivileged_port_start lets everyone bind {port}: nothing to prove here")
    address = free_loopback_address((8883, port, 8443))
    with unprivileged_dir() as home:
        argv, env = unprivileged_command(
            ["up", "--bind", address, "--dps-host", address],
            {"HOME": str(home), "IOTDPS_DATA_DIR": str(home / "data")},
        )
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    line = _one_error_line(result)
    assert f"cannot listen on {address}:{port} (the DPS HTTPS and websocket port)" in line
    for way_out in (
        "choose a port >= 1024 (--https-port or IOTDPS_HTTPS_PORT), e.g. --https-port 9443",
        "setcap cap_net_bind_service=+ep /",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        f"net.ipv4.ip_unprivileged_port_start to {port}",
    ):
        assert way_out in line


def test_an_ordinary_user_starts_on_unprivileged_ports() -> None:
    # What the README tells an ordinary user to run; the hub's websocket moves with --https-port.
    address = free_loopback_address((8883, 9443, 8443))
    with unprivileged_dir() as home:
        argv, env = unprivileged_command(
            ["up", "--bind", address, "--dps-host", address, "--https-port", "9443"],
            {"HOME": str(home), "IOTDPS_DATA_DIR": str(home / "data")},
        )
        log = home / "up.log"
        with log.open("w") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            deadline = time.monotonic() + 60
            while "iotdps is up" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            text = log.read_text()
            assert "iotdps is up" in text, text
            assert f"https://{address}:9443 (DPS REST, MQTT over websockets)" in text
            assert f"https://{address}:8443 (management API)" in text
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0


def test_an_address_in_use_is_one_line(tmp_path: Path) -> None:
    address = free_loopback_address((8883, 443, 8443))
    with socket.socket() as holder:
        holder.bind((address, 8883))
        holder.listen()
        result = _up(["--bind", address, "--dps-host", address], {"IOTDPS_DATA_DIR": str(tmp_path / "data")})
    line = _one_error_line(result)
    assert f"cannot listen on {address}:8883 (the DPS MQTT port): the address is already in use" in line
    assert "--mqtt-port or IOTDPS_MQTT_PORT" in line


def test_the_management_port_in_use_names_its_flag(tmp_path: Path) -> None:
    address = free_loopback_address((8883, 443, 8443))
    with socket.socket() as holder:
        holder.bind((address, 8443))
        holder.listen()
        result = _up(["--bind", address, "--dps-host", address], {"IOTDPS_DATA_DIR": str(tmp_path / "data")})
    line = _one_error_line(result)
    assert f"cannot listen on {address}:8443 (the management API port)" in line
    assert "--management-port or IOTDPS_MANAGEMENT_PORT" in line


@pytest.mark.parametrize(
    ("flag", "label", "how"),
    [
        ("--metrics-port", "the metrics port", "--metrics-port or IOTDPS_METRICS_PORT"),
        ("--crl-port", "the CRL distribution point's port", "--crl-port or IOTDPS_CRL_PORT"),
    ],
)
def test_the_optional_listeners_in_use_name_their_flags(tmp_path: Path, flag: str, label: str, how: str) -> None:
    address = free_loopback_address((8883, 443, 8443, 9464))
    with socket.socket() as holder:
        holder.bind((address, 9464))
        holder.listen()
        result = _up(
            ["--bind", address, "--dps-host", address, flag, "9464"]
            + (["--crl-bind", address] if flag == "--crl-port" else []),
            {"IOTDPS_DATA_DIR": str(tmp_path / "data")},
        )
    line = _one_error_line(result)
    assert f"cannot listen on {address}:9464 ({label}): the address is already in use" in line
    assert how in line


def test_an_address_this_machine_does_not_have(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: documentation only, never configured on a real interface.
    result = _up(["--bind", "192.0.2.10", "--dps-host", "192.0.2.10"], {"IOTDPS_DATA_DIR": str(tmp_path / "data")})
    line = _one_error_line(result)
    assert "cannot listen on 192.0.2.10:8883 (the DPS MQTT port): no network interface" in line
