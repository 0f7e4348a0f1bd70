"""Scripting the CLI (issue 17): --json on every list and report, the global --output, tables
that are never cut when piped, and one scheme of exit codes (0 ok, 1 checked and negative,
2 bad input, 3 not found)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from certkit import issue
from click.testing import CliRunner

from iotdps.cli.main import main

_LONG_HUB = "a-hub-with-a-very-long-host-name-that-no-eighty-column-table-would-show.example.local"


def _main(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """`iotdps ARGS` through main(), the edge that maps errors to exit codes; stdout is not a
    terminal here, as in a pipe."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {"IOTDPS_DATA_DIR": str(tmp_path / "data"), "IOTDPS_CA_DIR": str(tmp_path / "ca"), "IOTDPS_OUTPUT": ""}

    def invoke(*args: str, code: int = 0) -> str:
        got, out, err = _main(list(args), env)
        assert got == code, out + err
        return out

    return invoke


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_lists_and_reports_print_json_on_request(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    valid = {"not_before": now - timedelta(days=1), "not_after": now + timedelta(days=30)}
    root = issue("root", ca=True, **valid)
    dev = issue("dev-1", root, **valid)
    run("settings", "set", "--id-scope", "0ne00JSON")
    run("hub", "add", _LONG_HUB)
    run("ca", "upload", "root", _write(tmp_path / "root.pem", root.pem), "--verified")
    run("group", "create", "all", "--ca-ref", "root", "--disabled")
    run("enrollment", "create", "sk-1", "--symmetric-key")

    hubs = json.loads(run("hub", "list", "--json"))
    assert [h["name"] for h in hubs] == [_LONG_HUB]
    assert json.loads(run("--output", "json", "hub", "list")) == hubs  # the global option
    assert [c["name"] for c in json.loads(run("ca", "list", "--json"))] == ["root"]
    assert [g["enrollmentGroupId"] for g in json.loads(run("group", "list", "--json"))] == ["all"]
    (enrollment,) = json.loads(run("enrollment", "list", "--json"))
    assert enrollment["registrationId"] == "sk-1"
    assert "primaryKey" not in json.dumps(enrollment)  # a list never prints keys
    assert json.loads(run("refusals", "--json")) == []
    assert json.loads(run("registration", "list", "--json")) == []

    # explain: the decision as JSON, and exit 1 when the device would be refused.
    report = json.loads(run("explain", "--cert", _write(tmp_path / "dev.pem", dev.pem), "--json", code=1))
    assert report["admitted"] is False and report["decision"].startswith("refuse GROUP_DISABLED")
    assert report["registrationId"] == "dev-1" and report["lines"][-1] == "decision: " + report["decision"]
    run("group", "enable", "all")
    assert json.loads(run("explain", "--cert", str(tmp_path / "dev.pem"), "--json"))["admitted"] is True

    (inspected,) = json.loads(run("cert", "inspect", str(tmp_path / "dev.pem"), "--json"))
    assert inspected["subjectName"] == "CN=dev-1" and "CA:FALSE" in inspected["extensions"]["basicConstraints"]
    assert json.loads(run("--output", "json", "ca-dir", "list")) == []


def test_tables_are_never_cut_when_piped(run) -> None:  # type: ignore[no-untyped-def]
    run("hub", "add", _LONG_HUB, "--location", "a location long enough to push the row past any terminal")
    lines = run("hub", "list").splitlines()  # CliRunner's stdout is not a terminal
    assert lines[0].split() == ["host", "name", "weight", "apply", "allocation", "policy", "location", "served"]
    assert _LONG_HUB in lines[1]
    assert "a location long enough to push the row past any terminal  never: no node serves it" in lines[1]


def test_exit_codes(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("registration", "show", "nobody", code=3)
    run("enrollment", "show", "nobody", code=3)
    run("hub", "remove", "nosuch.local", code=3)
    run("telemetry", "tail", "--hub", "nosuch", "--no-follow", code=3)  # a typo is not silence
    run("device", "list", "--hub", "nosuch", code=3)
    run("group", "create", "g", "--symmetric-key", "--ca-ref", "x", code=2)
    run("hub", "list", "--output", "yaml", code=2)


def test_not_found_is_one_error_line_exit_3(tmp_path: Path) -> None:
    code, out, err = _main(["telemetry", "tail", "--hub", "nosuch", "--no-follow"], {"IOTDPS_DATA_DIR": str(tmp_path)})
    assert (code, out) == (3, "")
    assert err.strip() == "error: hub nosuch is not linked (linked hubs: none)"
