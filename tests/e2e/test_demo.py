"""`edgefabric demo` end to end, as a user runs it: a real subprocess that starts `edgefabric up`, three
agents, compiles, signs and rolls out, and must leave nothing running behind it.

Descendants are found through /proc (Linux) while the demo runs, each kept with its start time, so a
reused pid is never mistaken for a survivor.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STORY_TIMEOUT_S = 840.0
STEP_LINE = re.compile(r"^\[(\d+)/11\] (.+) \.\.\. (.+) \((\d+\.\d) s\)$")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; children die via prctl")

Process = tuple[int, str]
"""A pid with its start time (field 22 of /proc/<pid>/stat): the same pair is the same process."""


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)"
    if fields[0] == "Z":  # a zombie has exited; only its parent has not reaped it yet
        return None
    return int(fields[1]), fields[19]


def _descendants(root: int) -> set[Process]:
    parents: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[1]
    found: set[Process] = set()
    todo = list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        found.add((pid, started[pid]))
        todo += parents.get(pid, [])
    return found


def _alive(processes: set[Process]) -> list[str]:
    """The ones still running, with their command lines."""
    alive = []
    for pid, start in processes:
        stat = _stat(pid)
        if stat is not None and stat[1] == start:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            alive.append(f"{pid}: {cmdline}")
    return alive


def _command_lines(processes: set[Process], seen: dict[Process, str]) -> None:
    for process in processes - set(seen):
        try:
            seen[process] = Path(f"/proc/{process[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            seen[process] = ""


class Demo:
    """`edgefabric demo ARGS` in a subprocess (its TMPDIR inside the test's dir), its stdout read line by
    line, its descendants recorded every 0.2 s until it exits."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFABRIC")}
        self.tmp_dir = tmp_path / "tmp"
        self.tmp_dir.mkdir()
        self.stderr_path = tmp_path / "demo-stderr.txt"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "demo", *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env | {"TMPDIR": str(self.tmp_dir)},
                cwd=ROOT,
            )
        self.lines: list[str] = []
        self.seen: dict[Process, str] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _watch(self) -> None:
        while self.process.poll() is None:
            _command_lines(_descendants(self.process.pid), self.seen)
            time.sleep(0.2)

    def wait_for_line(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"the demo ended before {prefix!r}:\n" + "\n".join(self.lines)
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        """Wait for the exit: (exit code, all of stdout, stderr)."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the demo ran past {timeout_s} s") from None
        finally:
            while (line := self._lines.get(timeout=10)) is not None:
                self.lines.append(line)
        return self.process.returncode, "\n".join(self.lines), self.stderr_path.read_text()

    def work_dir(self) -> Path:
        """From the first line, `EdgeFabric demo: ... under <dir>`."""
        path = Path(self.lines[0].rsplit(" under ", 1)[1])
        assert path.parent == self.tmp_dir and path.name.startswith("edgefabric-demo-"), self.lines[0]
        return path

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.kill()


def _no_survivors(demo: Demo, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (alive := _alive(set(demo.seen))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, "outlived the demo:\n" + "\n".join(alive)


def _assert_saw_the_fleet(demo: Demo) -> None:
    commands = list(demo.seen.values())
    assert any("nats-server" in c for c in commands), commands
    agents = {m.group(1) for c in commands if (m := re.search(r"edge_agent.cli run .*/agents/([\w-]+)/", c))}
    assert agents == {"edge-cpu", "edge-openvino", "edge-mqtt"}, commands
    assert any("control_plane.cli up" in c for c in commands), commands


@pytest.mark.timeout(STORY_TIMEOUT_S + 60)
def test_demo_tells_the_whole_story_exits_0_and_leaves_nothing_behind(
    tmp_path: Path, demos: list[Demo]
) -> None:
    demo = Demo(tmp_path, "--exit-after", "0")
    demos.append(demo)
    code, stdout, stderr = demo.finish(STORY_TIMEOUT_S)
    assert code == 0, f"{stdout}\n{stderr}"

    steps = [match.groups() for line in stdout.splitlines() if (match := STEP_LINE.match(line))]
    assert [int(number) for number, *_ in steps] == list(range(1, 12)), stdout
    outcomes = {int(number): outcome for number, _, outcome, _ in steps}
    assert outcomes[2] == "3 online" and outcomes[5] == "built and validated", stdout
    assert outcomes[7] == "completed" and outcomes[8] == "3 agents answered with v1", stdout
    assert outcomes[10] == "halted and rolled back" and outcomes[11] == "all on v1", stdout
    halted = next(line for line in stdout.splitlines() if "v2 halted:" in line)
    assert re.search(r"p95 latency [\d.]+ ms vs [\d.]+ ms on v1 \(\+\d+ %, limit \+50 %\)", halted), halted
    assert "rolled back: 2 device(s) reverted" in stdout

    table = stdout[stdout.index("AGENT ") :].splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:4]}
    assert {name: row[1:5] for name, row in rows.items()} == {
        "edge-cpu": ["cpu-x86_64", "nats", "v1", "400"],
        "edge-openvino": ["intel-cpu-openvino", "nats", "v1", "400"],
        "edge-mqtt": ["cpu-x86_64", "mqtt", "v1", "400"],
    }
    assert all(float(row[5]) >= 0.9 for row in rows.values()), table
    assert "/schema/openapi.json" in stdout and "no web dashboard yet" in stdout

    _assert_saw_the_fleet(demo)
    _no_survivors(demo, timeout_s=0.0)  # stopped before the demo exited, not merely killed after
    assert not demo.work_dir().exists()  # the temporary work dir is removed


def test_a_step_that_cannot_happen_fails_the_demo_with_one_line(tmp_path: Path, demos: list[Demo]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        demo = Demo(tmp_path, "--port", str(port), "--exit-after", "0")
        demos.append(demo)
        code, stdout, stderr = demo.finish(120)
    assert code == 1, f"{stdout}\n{stderr}"
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("edgefabric: step 1 (start the control plane: edgefabric up"), stderr
    assert f"127.0.0.1:{port}" in stderr and "Address already in use" in stderr, stderr
    failed = re.compile(r"^\[1/11\] start the control plane: .* \.\.\. FAILED \(\d+\.\d s\)$", re.M)
    assert failed.search(stdout), stdout
    assert "[2/11]" not in stdout
    _no_survivors(demo)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_no_child_outlives_the_demo_when_it_is_stopped_mid_story(
    tmp_path: Path, demos: list[Demo], signum: signal.Signals
) -> None:
    demo = Demo(tmp_path)
    demos.append(demo)
    demo.wait_for_line("[2/11]", timeout_s=180)
    time.sleep(0.5)  # the watcher's next round records the agents
    _assert_saw_the_fleet(demo)
    demo.process.send_signal(signum)
    code = demo.process.wait(timeout=60)
    _no_survivors(demo)
    if signum == signal.SIGINT:
        # 130 from `run_cli`, or death by SIGINT (a shell shows 130 too): CPython exits by re-raising SIGINT
        # when the KeyboardInterrupt passed through C code that runs Python via `PyRun_String`, although
        # the demo caught it and cleaned up (seen 1 in ~8 runs, at the imports that start step 3).
        assert code in (130, -signal.SIGINT), demo.finish(10)
        assert "interrupted" in demo.stderr_path.read_text()
        assert not demo.work_dir().exists()
    else:
        assert code == -signal.SIGKILL
