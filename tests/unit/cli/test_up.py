import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src"


def test_up_with_invalid_config_lists_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[dps]\nmqtt_port = "x"\nbind = "nowhere"\n[[hubs]]\nweight = 2\n')
    result = subprocess.run(
        [sys.executable, "-m", "iotdps", "up", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "IOTDPS_DATA_DIR": str(tmp_path / "data")},
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for words in ("dps.mqtt_port must be an integer", "hubs[0] needs a host_name", "dps.bind must be an IP address"):
        assert words in result.stderr
    # Nothing was created for a configuration that does not validate.
    assert not (tmp_path / "data").exists()
