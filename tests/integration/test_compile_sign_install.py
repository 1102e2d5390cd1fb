"""One model through the compile → sign → verify flow, as a device would take it: every compiled
artifact is signed, verified against the device's trusted root, extracted, and reproduces its
golden outputs in the profile's runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hardware_profiles.runtimes import ExecutionSettings, open_session
from model_compiler.compiler import CompileRequest, compile_model
from model_compiler.golden import read_golden
from model_compiler.sample_models import digits_cnn
from model_compiler.signing.repository import init_repository, sign_release
from model_compiler.verification import ReleaseVerifier

PROFILES = ("cpu-x86_64", "intel-cpu-openvino")


def test_compiled_release_is_verified_and_reproduces_its_golden_outputs_on_a_device(tmp_path: Path) -> None:
    sample = digits_cnn().save(tmp_path / "model")
    report = compile_model(
        CompileRequest(
            model_path=sample.model_path,
            profiles=PROFILES,
            out_dir=tmp_path / "build",
            model_name="digits",
            version="1",
            calibration_path=sample.calibration_path,
            validation_path=sample.validation_path,
        )
    )
    assert report.is_success, [r.reason for r in report.results]
    repo = tmp_path / "repo"
    init_repository(repo)
    release = sign_release(repo, tmp_path / "build", "digits", "1")
    assert sorted(t.hw_profile for t in release.targets) == sorted(PROFILES)

    trusted_root = (repo / "metadata" / "1.root.json").read_bytes()  # what enrollment hands a device
    for profile in PROFILES:
        verifier = ReleaseVerifier.for_local_directory(trusted_root, tmp_path / f"device-{profile}", repo)
        installed = verifier.verify_and_download(
            "digits", "1", profile, min_counter=0, dest_dir=tmp_path / f"installed-{profile}"
        )
        manifest = installed.manifest
        session = open_session(
            installed.directory / manifest.model_file,
            ExecutionSettings(
                runtime=manifest.runtime,
                providers=manifest.providers,
                device=manifest.device,
                inference_precision_hint=manifest.inference_precision_hint,
                input_permutations=tuple(manifest.input_permutations.items()),
            ),
        )
        inputs, expected = read_golden(installed.directory / manifest.acceptance.golden_file)
        name = manifest.outputs[0].name
        produced = np.concatenate(
            [session.run({"image": inputs["image"][i : i + 1]})[name] for i in range(len(inputs["image"]))]
        )
        np.testing.assert_allclose(produced, expected[name], atol=manifest.acceptance.max_abs_error)
