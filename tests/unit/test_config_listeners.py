"""Every listener's address and port is a setting (TOML, IOTDPS_* variable and `up` flag), the
implicit hub follows the DPS's ports, and listeners that would claim one port for two things
are a configuration error, not a bind failure at start."""

from pathlib import Path

import pytest

from iotdps.config import load_config
from iotdps.errors import ConfigError


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {"IOTDPS_DATA_DIR": str(tmp_path), **{f"IOTDPS_{k}": v for k, v in more.items()}}


def test_the_implicit_hub_follows_the_dps_ports(tmp_path: Path) -> None:
    # An ordinary user who moves the DPS off 443 must not be left with a hub still on 443.
    config = load_config(environ=_env(tmp_path, HTTPS_PORT="9443", MQTT_PORT="9883"))
    (hub,) = config.effective_hubs
    assert (hub.mqtt_port, hub.websocket_port) == (9883, 9443)
    assert (hub.bind, hub.host_name) == (config.dps.bind, config.dps.host_name)


def test_hub_ports_by_environment_and_override(tmp_path: Path) -> None:
    config = load_config(environ=_env(tmp_path, HUB_MQTT_PORT="18883", HUB_WEBSOCKET_PORT="10443", HTTPS_PORT="9443"))
    (hub,) = config.effective_hubs
    assert (hub.mqtt_port, hub.websocket_port) == (18883, 10443)
    config = load_config(
        environ=_env(tmp_path, HUB_WEBSOCKET_PORT="10443", HTTPS_PORT="9443"),
        overrides={"hub_ports.websocket": 11443, "dps.mqtt_port": 7883},
    )
    (hub,) = config.effective_hubs
    assert (hub.mqtt_port, hub.websocket_port) == (7883, 11443)


def test_configured_hubs_take_the_default_ports_unless_they_set_their_own(tmp_path: Path) -> None:
    file = tmp_path / "iotdps.toml"
    file.write_text(
        '[[hubs]]\nhost_name = "a.local"\nbind = "127.0.0.6"\n'
        '[[hubs]]\nhost_name = "b.local"\nbind = "127.0.0.7"\nwebsocket_port = 8444\nmqtt_port = 8884\n'
    )
    config = load_config(file, environ=_env(tmp_path, HTTPS_PORT="9443"))
    a, b = config.hubs
    assert (a.mqtt_port, a.websocket_port) == (8883, 9443)
    assert (b.mqtt_port, b.websocket_port) == (8884, 8444)


def test_management_follows_bind_unless_set(tmp_path: Path) -> None:
    config = load_config(environ=_env(tmp_path), overrides={"dps.bind": "127.0.0.3"})
    assert (config.management.bind, config.management.port) == ("127.0.0.3", 8443)
    config = load_config(environ=_env(tmp_path, MANAGEMENT_BIND="127.0.0.4"), overrides={"dps.bind": "127.0.0.3"})
    assert config.management.bind == "127.0.0.4"
    config = load_config(
        environ=_env(tmp_path),
        overrides={"dps.bind": "127.0.0.3", "management.bind": "127.0.0.1", "management.port": 9000},
    )
    assert (config.management.bind, config.management.port) == ("127.0.0.1", 9000)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"HTTPS_PORT": "8443"}, "dps.https_port and management.port both take port 8443 on 127.0.0.1"),
        ({"MQTT_PORT": "443"}, "dps.mqtt_port and dps.https_port both take port 443 on 127.0.0.1"),
        ({"HUB_WEBSOCKET_PORT": "8883"}, "the implicit hub websocket port"),
        ({"HUB_MQTT_PORT": "8443"}, "management.port"),
        ({"HUB_WEBSOCKET_PORT": "70000"}, "hub_ports.websocket must be 1..65535"),
        ({"HUB_MQTT_PORT": "-1"}, "hub_ports.mqtt must be 1..65535"),
    ],
)
def test_listeners_that_would_collide_are_config_errors(tmp_path: Path, env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=_env(tmp_path, **env))
    assert words in "\n".join(info.value.problems)


def test_an_unspecified_bind_clashes_with_every_address(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=_env(tmp_path, MANAGEMENT_BIND="0.0.0.0", MANAGEMENT_PORT="443"))
    assert "both take port 443" in "\n".join(info.value.problems)


def test_the_crl_section_is_a_known_setting(tmp_path: Path) -> None:
    # [crl] was read but missing from the known top-level tables, so any CRL setting, from the
    # file or IOTDPS_CRL_*, was "unknown setting 'crl'".
    config = load_config(environ=_env(tmp_path, CRL_PORT="8080"))
    assert config.crl.port == 8080
