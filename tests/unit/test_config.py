from pathlib import Path

import pytest

from iotdps.config import load_config
from iotdps.errors import ConfigError


def test_defaults_use_sqlite_in_data_dir(tmp_path: Path) -> None:
    config = load_config(environ={"IOTDPS_DATA_DIR": str(tmp_path)})
    assert config.data_dir == tmp_path
    assert config.database_dsn == f"sqlite:///{tmp_path / 'iotdps.db'}"
    assert config.dps.mqtt_port == 8883 and config.dps.https_port == 443
    # With no hub configured, one hub shares the DPS host name.
    assert [h.host_name for h in config.effective_hubs] == ["localhost"]
    assert config.server_names() == ("localhost", "127.0.0.1")


def test_toml_then_environment(tmp_path: Path) -> None:
    file = tmp_path / "iotdps.toml"
    file.write_text(
        """
data_dir = "/srv/x"
[dps]
host_name = "127.0.0.5"
bind = "127.0.0.5"
[limits]
registrations_per_second = 20
[[hubs]]
host_name = "127.0.0.6"
bind = "127.0.0.6"
weight = 3
[[hubs]]
host_name = "127.0.0.7"
bind = "127.0.0.7"
"""
    )
    config = load_config(file, environ={"IOTDPS_DPS_BIND": "127.0.0.9", "IOTDPS_TLS_EXTRA_NAMES": "a.local, b.local"})
    assert config.data_dir == Path("/srv/x")
    assert config.dps.bind == "127.0.0.9"
    assert config.dps.host_name == "127.0.0.5"
    assert config.limits.registrations_per_second == 20.0
    assert [(h.host_name, h.weight) for h in config.hubs] == [("127.0.0.6", 3), ("127.0.0.7", 1)]
    assert config.server_names() == (
        "localhost",
        "127.0.0.1",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
        "a.local",
        "b.local",
        "127.0.0.9",
    )
    # No [management] bind: the management API follows the DPS address.
    assert config.management_host == "127.0.0.9"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(
        """
colour = "blue"
[dps]
mqtt_port = "eighty"
bind = "not-an-ip"
[management]
port = 70000
[[hubs]]
bind = "127.0.0.2"
[[hubs]]
host_name = "h"
weight = 5000
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={"IOTDPS_REGISTRATIONS_PER_SECOND": "lots"})
    problems = info.value.problems
    joined = "\n".join(problems)
    for words in (
        "unknown setting 'colour'",
        "dps.mqtt_port must be an integer",
        "limits.registrations_per_second must be a number",
        "hubs[0] needs a host_name",
        "hubs[1].weight must be 1..1000",
    ):
        assert words in joined
    assert len(problems) >= 5


def test_bad_values_after_conversion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            environ={"IOTDPS_DATA_DIR": str(tmp_path), "IOTDPS_DPS_BIND": "nowhere", "IOTDPS_MANAGEMENT_PORT": "0"}
        )
    joined = "\n".join(info.value.problems)
    assert "dps.bind must be an IP address" in joined
    assert "management.port must be 1..65535" in joined


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[dps\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, environ={})


def test_overrides_win(tmp_path: Path) -> None:
    config = load_config(environ={"IOTDPS_DATA_DIR": str(tmp_path)}, overrides={"dps.bind": "127.0.0.3", "dsn": None})
    assert config.dps.bind == "127.0.0.3"


def test_connect_timeout_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[limits]\nconnect_timeout = 5\n")
    assert load_config(good, environ={"IOTDPS_DATA_DIR": str(tmp_path)}).limits.connect_timeout == 5.0
    assert load_config(environ={"IOTDPS_DATA_DIR": str(tmp_path)}).limits.connect_timeout == 30.0
    for value in ("0", "-1", "7200"):
        bad = tmp_path / f"bad{value}.toml"
        bad.write_text(f"[limits]\nconnect_timeout = {value}\n")
        with pytest.raises(ConfigError) as info:
            load_config(bad, environ={"IOTDPS_DATA_DIR": str(tmp_path)})
        assert "limits.connect_timeout must be > 0 and at most 3600 seconds" in info.value.problems


def test_device_token_lifetime(tmp_path: Path) -> None:
    assert load_config(environ={"IOTDPS_DATA_DIR": str(tmp_path)}).auth.device_token_max_lifetime == 86400
    file = tmp_path / "iotdps.toml"
    file.write_text("[auth]\ndevice_token_max_lifetime = 7200\n")
    assert load_config(file, environ={"IOTDPS_DATA_DIR": str(tmp_path)}).auth.device_token_max_lifetime == 7200
    env = {"IOTDPS_DATA_DIR": str(tmp_path), "IOTDPS_DEVICE_TOKEN_MAX_LIFETIME": "600"}
    assert load_config(file, environ=env).auth.device_token_max_lifetime == 600
    for bad in ("10", str(400 * 24 * 3600)):
        with pytest.raises(ConfigError, match=r"auth\.device_token_max_lifetime must be 60\.\.31622400"):
            load_config(environ={**env, "IOTDPS_DEVICE_TOKEN_MAX_LIFETIME": bad})


def test_webhook_allowlist(tmp_path: Path) -> None:
    assert load_config(environ={"IOTDPS_DATA_DIR": str(tmp_path)}).allocation.webhook_allowlist == ()
    file = tmp_path / "iotdps.toml"
    file.write_text('[allocation]\nwebhook_allowlist = ["http://alloc.internal:8080/api", "10.0.0.0/8"]\n')
    config = load_config(file, environ={"IOTDPS_DATA_DIR": str(tmp_path)})
    assert config.allocation.webhook_destinations.check("https://10.1.1.1/x").refusal is None
    env = {"IOTDPS_DATA_DIR": str(tmp_path), "IOTDPS_WEBHOOK_ALLOWLIST": "hooks.local, 192.0.2.0/24"}
    assert load_config(file, environ=env).allocation.webhook_allowlist == ("hooks.local", "192.0.2.0/24")
    with pytest.raises(ConfigError, match=r"allocation\.webhook_allowlist: 'ftp://x'"):
        load_config(environ={**env, "IOTDPS_WEBHOOK_ALLOWLIST": "ftp://x"})


def test_own_server_certificate_files(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text('[tls]\ncert_file = "/etc/iotdps/server.pem"\nkey_file = "/etc/iotdps/server.key"\n')
    tls = load_config(config_file, environ={}).tls
    assert (tls.cert_file, tls.key_file, tls.own_certificate) == (
        "/etc/iotdps/server.pem",
        "/etc/iotdps/server.key",
        True,
    )
    assert not load_config(None, environ={}).tls.own_certificate
    env = {"IOTDPS_TLS_CERT_FILE": "/a.pem", "IOTDPS_TLS_KEY_FILE": "/a.key"}
    assert load_config(None, environ=env).tls.cert_file == "/a.pem"
    config_file.write_text('[tls]\ncert_file = "/etc/iotdps/server.pem"\n')
    with pytest.raises(ConfigError, match="set both or neither"):
        load_config(config_file, environ={})


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("registration_burst", -1, "limits.registration_burst must be at least 1"),
        ("registration_burst", 0, "limits.registration_burst must be at least 1"),
        ("retry_after_seconds", -3, "limits.retry_after_seconds must be at least 1"),
        ("max_connections", 0, "limits.max_connections must be at least 1"),
        ("registrations_per_second", -1, "limits.registrations_per_second must be >= 0"),
        ("certificate_requests_per_minute", 0, "limits.certificate_requests_per_minute must be > 0 and at most 600"),
        ("certificate_request_burst", 0, "limits.certificate_request_burst must be 1..1000"),
    ],
)
def test_impossible_limits_are_config_errors(tmp_path: Path, setting: str, value: int, words: str) -> None:
    # Issue 17: `registration_burst = -1` started a node that refused every device.
    file = tmp_path / "limits.toml"
    file.write_text(f"[limits]\n{setting} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert words in info.value.problems


def test_metrics_defaults_ask_for_a_token_on_the_management_port(tmp_path: Path) -> None:
    config = load_config(environ={"IOTDPS_DATA_DIR": str(tmp_path)})
    assert (config.metrics.port, config.metrics.require_auth) == (0, True)
    assert config.metrics_token_file == tmp_path / "metrics-token"
    assert config.metrics_bind == config.management.bind


def test_metrics_from_file_environment_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[metrics]\nport = 9464\nbind = "127.0.0.7"\nrequire_auth = false\ntoken_file = "~/m.tok"\n')
    config = load_config(file, environ={"IOTDPS_DATA_DIR": str(tmp_path)})
    assert (config.metrics.port, config.metrics_bind, config.metrics.require_auth) == (9464, "127.0.0.7", False)
    assert config.metrics_token_file == Path("~/m.tok").expanduser()
    env = {"IOTDPS_DATA_DIR": str(tmp_path), "IOTDPS_METRICS_PORT": "9500", "IOTDPS_METRICS_REQUIRE_AUTH": "yes"}
    config = load_config(file, environ=env, overrides={"metrics.bind": "127.0.0.8"})
    assert (config.metrics.port, config.metrics_bind, config.metrics.require_auth) == (9500, "127.0.0.8", True)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"IOTDPS_METRICS_PORT": "8443"}, "metrics.port collides with management.port on the same address"),
        ({"IOTDPS_METRICS_PORT": "8883"}, "metrics.port collides with dps.mqtt_port on the same address"),
        ({"IOTDPS_METRICS_PORT": "443", "IOTDPS_METRICS_BIND": "0.0.0.0"}, "metrics.port collides with dps.https_port"),
        ({"IOTDPS_METRICS_PORT": "70000"}, "metrics.port must be 0 (none) or 1..65535, not 70000"),
        ({"IOTDPS_METRICS_PORT": "-1"}, "metrics.port must be 0 (none) or 1..65535, not -1"),
        ({"IOTDPS_METRICS_PORT": "9464", "IOTDPS_METRICS_BIND": "metrics.local"}, "metrics.bind must be an IP address"),
        ({"IOTDPS_METRICS_BIND": "127.0.0.1"}, "metrics.bind needs metrics.port"),
        ({"IOTDPS_METRICS_REQUIRE_AUTH": "maybe"}, "metrics.require_auth must be true or false, not 'maybe'"),
        ({"IOTDPS_METRICS_PORT": "lots"}, "metrics.port must be an integer, not 'lots'"),
    ],
)
def test_bad_metrics_settings_say_which(tmp_path: Path, env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"IOTDPS_DATA_DIR": str(tmp_path), **env})
    assert any(problem in p for p in info.value.problems), info.value.problems
