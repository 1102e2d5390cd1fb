"""Both console scripts as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import platform
import subprocess

import pytest


def run(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.mark.parametrize("command", ["edgefabric", "edgefabric-agent"])
def test_help_lists_the_commands(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout and "COMMAND" in result.stdout


@pytest.mark.parametrize("command", ["edgefabric", "edgefabric-agent"])
def test_unknown_subcommand_is_one_line_and_exit_code_2(command: str) -> None:
    result = run(command, "frobnicate")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown command 'frobnicate'" in lines[0]


def test_agent_profiles_json_lists_this_hosts_cpu_profile() -> None:
    result = run("edgefabric-agent", "profiles", "--json")
    assert result.returncode == 0, result.stderr
    detection = json.loads(result.stdout)
    usable = [entry["profile"]["name"] for entry in detection["usable"]]
    if platform.machine() in ("x86_64", "AMD64"):
        assert "cpu-x86_64" in usable
        assert "intel-cpu-openvino" in usable  # openvino is installed by the test command
        assert usable.index("intel-cpu-openvino") < usable.index("cpu-x86_64")
    assert all(entry["evidence"] for entry in detection["usable"])


def test_agent_profiles_table_shows_evidence() -> None:
    result = run("edgefabric-agent", "profiles", "--all")
    assert result.returncode == 0
    assert "PROFILE" in result.stdout and "EVIDENCE" in result.stdout
    assert "not usable: nvidia-gpu" in result.stdout


def test_broker_command_prints_urls_and_exits_cleanly(tmp_path: object) -> None:
    result = run("edgefabric", "broker", "--data-dir", str(tmp_path), "--exit-after", "0.2")
    assert result.returncode == 0, result.stderr
    assert "nats://127.0.0.1:" in result.stdout and "mqtt://127.0.0.1:" in result.stdout
