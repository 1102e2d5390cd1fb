"""What a device install loads: the agent's modules never pull in the compiler toolchain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_verification_half_does_not_load_the_toolchain() -> None:
    script = (
        "import sys, edge_agent.acceptance, model_compiler.verification;"
        "print(sorted({'onnx', 'openvino', 'nncf', 'tensorflow', 'litestar', 'flwr'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
