"""Hardware profiles: packaged files load, bad files fail naming file and field, fallbacks, detection."""

from __future__ import annotations

import importlib.util
import platform
from importlib.resources import files
from pathlib import Path

import msgspec
import pytest

from hardware_profiles.detect import DetectedProfile, Detection, HostFacts, detect, explain, parse_cpu_flags
from hardware_profiles.errors import FallbackError, ProfileFileError, UnknownProfileError
from hardware_profiles.loader import (
    all_profiles,
    check_fallbacks,
    fallback_chain,
    load_profile,
    load_profile_file,
)
from hardware_profiles.profile import HardwareProfile, OpenVinoExecution
from hardware_profiles.report import render_table

PROFILE_NAMES = {
    "cpu-x86_64",
    "cpu-arm64",
    "nvidia-gpu",
    "nvidia-jetson",
    "intel-npu",
    "intel-gpu",
    "intel-cpu-openvino",
    "tflite-arm",
}
X86_ORT_CPU = ("CPUExecutionProvider",)
ORT_CUDA = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def packaged_text(name: str) -> str:
    return (files("hardware_profiles") / "profiles" / f"{name}.toml").read_text(encoding="utf-8")


def write_edited(tmp_path: Path, name: str, old: str, new: str, *, file_stem: str | None = None) -> Path:
    text = packaged_text(name)
    assert old in text, f"test setup: {old!r} not in {name}.toml"
    path = tmp_path / f"{file_stem or name}.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def names(detected: list[DetectedProfile]) -> list[str]:
    return [d.name for d in detected]


# --- loading --------------------------------------------------------------------------------------


def test_every_packaged_profile_loads_under_its_file_name() -> None:
    profiles = all_profiles()
    assert set(profiles) == PROFILE_NAMES
    for name, profile in profiles.items():
        assert profile.name == name
        assert load_profile(name) == profile
        assert profile.description


def test_a_packaged_profile_loads_the_same_from_a_plain_file_path(tmp_path: Path) -> None:
    path = tmp_path / "intel-npu.toml"
    path.write_text(packaged_text("intel-npu"), encoding="utf-8")
    assert load_profile_file(path) == load_profile("intel-npu")


def test_openvino_cpu_profile_pins_f32_instead_of_the_bf16_default() -> None:
    execution = load_profile("intel-cpu-openvino").execution
    assert isinstance(execution, OpenVinoExecution)
    assert (execution.device, execution.inference_precision_hint) == ("CPU", "f32")


def test_unknown_field_fails_naming_file_and_field(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "cpu-x86_64", "max_relative_error = 0.35", "max_relative_eror = 0.35")
    with pytest.raises(ProfileFileError) as caught:
        load_profile_file(path)
    assert caught.value.field == "validation.max_relative_eror"
    assert "cpu-x86_64.toml" in caught.value.message
    assert "validation.max_relative_eror" in caught.value.message


def test_wrong_type_fails_naming_file_and_field(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "cpu-x86_64", "p95_latency_ms = 250.0", 'p95_latency_ms = "fast"')
    with pytest.raises(
        ProfileFileError, match=r"cpu-x86_64\.toml: latency\.p95_latency_ms: Expected `float`"
    ):
        load_profile_file(path)


def test_missing_field_fails_naming_file_and_field(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "cpu-x86_64", "min_cosine_similarity = 0.95\n", "")
    with pytest.raises(ProfileFileError, match=r"cpu-x86_64\.toml: validation\.min_cosine_similarity"):
        load_profile_file(path)


def test_openvino_profile_without_pinned_inference_precision_is_rejected(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "intel-cpu-openvino", 'inference_precision_hint = "f32"\n', "")
    with pytest.raises(ProfileFileError) as caught:
        load_profile_file(path)
    assert caught.value.field == "execution.inference_precision_hint"


def test_tolerance_outside_zero_to_one_fails_naming_the_field(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "nvidia-gpu", "min_top1_agreement = 0.99", "min_top1_agreement = 99")
    with pytest.raises(ProfileFileError) as caught:
        load_profile_file(path)
    assert caught.value.field == "validation.min_top1_agreement"


def test_unknown_runtime_fails_naming_the_runtime_field(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "cpu-arm64", 'runtime = "onnxruntime"', 'runtime = "tensorflow"')
    with pytest.raises(ProfileFileError) as caught:
        load_profile_file(path)
    assert caught.value.field == "execution.runtime"


def test_invalid_toml_fails_naming_file_and_the_key_on_the_broken_line(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "cpu-x86_64", 'runtime = "onnxruntime"', "runtime = onnxruntime")
    with pytest.raises(ProfileFileError) as caught:
        load_profile_file(path)
    assert caught.value.field == "execution.runtime"
    assert "cpu-x86_64.toml" in caught.value.message
    assert "invalid TOML" in caught.value.message


def test_name_that_differs_from_the_file_stem_is_rejected(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "cpu-x86_64", "# Baseline", "# Copied", file_stem="cpu-copy")
    with pytest.raises(ProfileFileError) as caught:
        load_profile_file(path)
    assert caught.value.field == "name"
    assert "cpu-copy.toml" in caught.value.message


def test_artifact_format_that_the_runtime_cannot_load_is_rejected(tmp_path: Path) -> None:
    path = write_edited(
        tmp_path, "intel-gpu", 'artifact_format = "openvino-ir"', 'artifact_format = "tflite"'
    )
    with pytest.raises(ProfileFileError, match=r"intel-gpu\.toml: compile\.artifact_format: 'tflite'"):
        load_profile_file(path)


def test_int8_precision_without_a_quantize_pass_is_rejected(tmp_path: Path) -> None:
    path = write_edited(tmp_path, "cpu-x86_64", ', "quantize-static-qdq"]', "]")
    with pytest.raises(ProfileFileError) as caught:
        load_profile_file(path)
    assert caught.value.field == "compile.passes"


def test_missing_file_fails_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileFileError, match=r"nope\.toml: cannot read"):
        load_profile_file(tmp_path / "nope.toml")


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProfileError) as caught:
        load_profile("coral-edgetpu")
    assert set(caught.value.known) == PROFILE_NAMES
    assert "cpu-x86_64" in caught.value.message


# --- fallbacks ------------------------------------------------------------------------------------


def test_intel_npu_falls_back_through_gpu_and_openvino_cpu_to_plain_cpu() -> None:
    chain = fallback_chain("intel-npu")
    assert [p.name for p in chain] == ["intel-npu", "intel-gpu", "intel-cpu-openvino", "cpu-x86_64"]


def test_accelerators_fall_back_to_the_cpu_profile_of_their_architecture() -> None:
    assert [p.name for p in fallback_chain("nvidia-gpu")] == ["nvidia-gpu", "cpu-x86_64"]
    assert [p.name for p in fallback_chain("nvidia-jetson")] == ["nvidia-jetson", "cpu-arm64"]
    assert [p.name for p in fallback_chain("tflite-arm")] == ["tflite-arm", "cpu-arm64"]


def with_fallback(name: str, fallback: str | None) -> HardwareProfile:
    return msgspec.structs.replace(load_profile(name), fallback=fallback)


def test_fallback_cycle_is_rejected() -> None:
    profiles = {
        "intel-gpu": with_fallback("intel-gpu", "intel-cpu-openvino"),
        "intel-cpu-openvino": with_fallback("intel-cpu-openvino", "intel-gpu"),
    }
    with pytest.raises(FallbackError, match="intel-gpu -> intel-cpu-openvino -> intel-gpu"):
        check_fallbacks(profiles)


def test_fallback_to_an_unknown_profile_is_rejected() -> None:
    with pytest.raises(FallbackError, match="unknown profile 'intel-gpu'"):
        check_fallbacks({"intel-npu": load_profile("intel-npu")})


def test_fallback_to_another_architecture_is_rejected() -> None:
    profiles = {
        "nvidia-gpu": with_fallback("nvidia-gpu", "cpu-arm64"),
        "cpu-arm64": load_profile("cpu-arm64"),
    }
    with pytest.raises(FallbackError, match="none of its architectures"):
        check_fallbacks(profiles)


# --- detection ------------------------------------------------------------------------------------


def test_plain_x86_host_can_use_only_the_cpu_profile() -> None:
    facts = HostFacts(architecture="x86_64", ort_providers=X86_ORT_CPU)
    assert names(detect(facts)) == ["cpu-x86_64"]


def test_x86_host_with_openvino_cpu_prefers_openvino_over_plain_onnxruntime() -> None:
    facts = HostFacts(architecture="x86_64", ort_providers=X86_ORT_CPU, openvino_devices=("CPU",))
    assert names(detect(facts)) == ["intel-cpu-openvino", "cpu-x86_64"]


def test_x86_host_with_cuda_provider_prefers_the_nvidia_gpu() -> None:
    facts = HostFacts(architecture="x86_64", ort_providers=ORT_CUDA)
    detected = detect(facts)
    assert names(detected) == ["nvidia-gpu", "cpu-x86_64"]
    assert "onnxruntime provider CUDAExecutionProvider" in detected[0].evidence


def test_intel_laptop_orders_npu_then_gpu_then_cpu() -> None:
    facts = HostFacts(
        architecture="AMD64", ort_providers=X86_ORT_CPU, openvino_devices=("CPU", "GPU.0", "NPU")
    )
    assert names(detect(facts)) == ["intel-npu", "intel-gpu", "intel-cpu-openvino", "cpu-x86_64"]


def test_arm64_host_with_litert_can_use_tflite_and_the_arm_cpu_profile() -> None:
    facts = HostFacts(
        architecture="aarch64", ort_providers=X86_ORT_CPU, python_modules=frozenset({"ai_edge_litert"})
    )
    detected = detect(facts)
    assert names(detected) == ["tflite-arm", "cpu-arm64"]
    assert "python module ai_edge_litert" in detected[0].evidence


def test_arm64_host_with_cuda_is_a_jetson() -> None:
    facts = HostFacts(architecture="aarch64", ort_providers=ORT_CUDA)
    assert names(detect(facts)) == ["nvidia-jetson", "cpu-arm64"]


def test_host_without_any_runtime_has_no_usable_profile_and_says_why() -> None:
    detection = explain(HostFacts(architecture="x86_64"))
    assert detection.usable == ()
    reasons = {r.name: r.reasons for r in detection.rejected}
    assert set(reasons) == PROFILE_NAMES
    assert any("onnxruntime is not importable" in r for r in reasons["cpu-x86_64"])
    assert any("openvino is not importable" in r for r in reasons["intel-npu"])


def test_present_preferred_cpu_flags_are_reported_as_evidence() -> None:
    facts = HostFacts(
        architecture="x86_64", ort_providers=X86_ORT_CPU, cpu_flags=frozenset({"avx2", "avx512_vnni"})
    )
    (cpu,) = detect(facts)
    assert cpu.evidence == (
        "arch x86_64",
        "onnxruntime provider CPUExecutionProvider",
        "cpu flag avx512_vnni",
    )


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo() -> None:
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx512_vnni\nbugs\t: spectre\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0c\n"
    assert parse_cpu_flags(x86) == {"fpu", "sse2", "avx512_vnni"}
    assert parse_cpu_flags(arm) == {"fp", "asimd", "asimddp", "i8mm"}
    assert parse_cpu_flags("") == frozenset()


def test_detection_round_trips_through_json() -> None:
    facts = HostFacts(architecture="x86_64", ort_providers=ORT_CUDA, openvino_devices=("CPU",))
    detection = explain(facts)
    encoded = msgspec.json.encode(detection, order="deterministic")
    assert msgspec.json.decode(encoded, type=Detection) == detection


def test_table_lists_profiles_in_preference_order_with_aligned_columns() -> None:
    facts = HostFacts(architecture="x86_64", ort_providers=ORT_CUDA, openvino_devices=("CPU",))
    header, *rows = render_table(detect(facts)).splitlines()
    assert header.split() == ["RANK", "PROFILE", "RUNTIME", "DEVICE/PROVIDERS", "EVIDENCE"]
    assert [row.split()[1] for row in rows] == ["nvidia-gpu", "intel-cpu-openvino", "cpu-x86_64"]
    assert "Tensorrt, CUDA, CPU" in rows[0]
    assert "CPU (f32)" in rows[1]
    evidence_column = header.index("EVIDENCE")
    assert all(row[evidence_column - 2 : evidence_column] == "  " for row in rows)
    assert all(row[evidence_column:].startswith("arch x86_64") for row in rows)


def test_this_host_detects_its_cpu_profiles() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the expectations below are for x86-64 hosts")
    detected = names(detect())
    if importlib.util.find_spec("onnxruntime") is not None:
        assert "cpu-x86_64" in detected
    if importlib.util.find_spec("openvino") is not None:
        assert "intel-cpu-openvino" in detected
    assert not {"nvidia-jetson", "cpu-arm64", "tflite-arm"} & set(detected)
