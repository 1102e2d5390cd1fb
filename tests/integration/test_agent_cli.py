"""`edgefabric-agent` commands as a device operator runs them (real subprocesses, no network)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from model_compiler.sample_models import SavedSample, digits_mlp
from model_compiler.signing.bundle import make_bundle
from model_compiler.signing.repository import init_repository, sign_release
from tests.fleet import build_release


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["edgefabric-agent", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SavedSample]:
    base = tmp_path_factory.mktemp("bundle")
    sample = digits_mlp().save(base / "sample")
    build = build_release(sample, base / "build", "1", ("cpu-x86_64",))
    repo = base / "repo"
    init_repository(repo)
    sign_release(repo, build, "digits", "1")
    make_bundle(repo, "digits", "1", base / "usb")
    return base / "usb", repo / "metadata" / "1.root.json", sample


def test_offline_bundle_installs_and_predict_works_without_any_network(
    tmp_path: Path, bundle: tuple[Path, Path, SavedSample]
) -> None:
    usb, root, sample = bundle
    state = ["--state-dir", str(tmp_path / "state"), "--profile", "cpu-x86_64"]
    loaded = agent("load", str(usb), "--trusted-root", str(root), *state)
    assert loaded.returncode == 0, loaded.stderr
    assert "installed digits 1 (cpu-x86_64)" in loaded.stdout

    np.save(tmp_path / "x.npy", np.load(sample.validation_path)["pixels"][:3])
    predicted = agent("predict", "digits", "--input", str(tmp_path / "x.npy"), "--json", *state)
    assert predicted.returncode == 0, predicted.stderr
    result = json.loads(predicted.stdout)
    assert result["version"] == "1" and np.asarray(result["outputs"]["logits"]).shape == (3, 10)

    status = agent("status", "--json", *state)
    assert status.returncode == 0, status.stderr
    (model,) = json.loads(status.stdout)["models"]
    assert (model["model"], model["current"], model["state"]) == ("digits", "1", "active")
    table = agent("status", *state)
    assert "digits" in table.stdout and "CURRENT" in table.stdout


def test_bundle_is_refused_against_another_devices_root(
    tmp_path: Path, bundle: tuple[Path, Path, SavedSample]
) -> None:
    usb, _, _ = bundle
    other = tmp_path / "other"
    init_repository(other)
    result = agent(
        "load",
        str(usb),
        "--trusted-root",
        str(other / "metadata" / "1.root.json"),
        "--state-dir",
        str(tmp_path / "state"),
        "--profile",
        "cpu-x86_64",
    )
    assert result.returncode == 1
    assert "refused" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_load_without_a_trusted_root_never_trusts_the_bundle(
    tmp_path: Path, bundle: tuple[Path, Path, SavedSample]
) -> None:
    usb, _, _ = bundle
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFABRIC_AGENT_")}
    result = agent(
        "load",
        str(usb),
        "--state-dir",
        str(tmp_path / "state"),
        "--profile",
        "cpu-x86_64",
        env=clean | {"HOME": str(tmp_path)},
    )  # no config file with a root either
    assert result.returncode == 1 and "trusted_root" in result.stderr


def test_predict_of_a_model_that_is_not_installed_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(b"")
    result = agent("predict", "nope", "--input", str(tmp_path / "x.npy"), "--state-dir", str(tmp_path))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "not served" in result.stderr


def test_bad_config_value_names_the_key_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('http_port = "eighty"\n')
    result = agent("status", "--config", str(config))
    assert result.returncode == 1 and "http_port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_install_writes_config_and_a_systemd_unit(tmp_path: Path) -> None:
    result = agent(
        "install",
        "--user",
        "--config-out",
        str(tmp_path / "agent.toml"),
        "--unit-dir",
        str(tmp_path / "units"),
        "--nats-url",
        "nats://127.0.0.1:4222",
        "--device-id",
        "dev-7",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "units" / "edgefabric-agent.service").read_text()
    assert "ExecStart=" in unit and f"--config {tmp_path / 'agent.toml'}" in unit
    config = (tmp_path / "agent.toml").read_text()
    assert 'device_id = "dev-7"' in config and 'nats_url = "nats://127.0.0.1:4222"' in config
    assert (tmp_path / "agent.toml").stat().st_mode & 0o777 == 0o600
    assert "systemctl --user" in result.stdout
