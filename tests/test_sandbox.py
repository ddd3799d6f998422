"""The sandbox of generated code: five attacks are contained, and each would succeed without it.

Every attack runs twice where that is safe: isolated (the default), where nothing outside may change,
and with `isolate=False`, where the same program does the damage, so each test shows that the sandbox,
not the test's set-up, stopped it. Each test cleans up what the unsandboxed run left behind.
"""

import os
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from space.errors import SpaceError
from space.eval import run_program
from space.eval.code import isolation

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (bash scripts/setup_toolchains.sh --sandbox-only); CI installs it",
)


@pytest.fixture
def outside():
    """A directory outside /tmp (the sandbox gives /tmp a private tmpfs; this one it must make read-only)
    that anybody may write, so only the sandbox can stop a write."""
    base = Path("/var/tmp") if os.access("/var/tmp", os.W_OK) else Path(__file__).resolve().parent
    path = base / f".space-sandbox-victim-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    path.chmod(0o777)
    (path / "keep.txt").write_text("precious")
    (path / "keep.txt").chmod(0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _python(source: str) -> str:
    return textwrap.dedent(source)


def test_deleting_a_file_outside_fails_and_the_file_stays(outside, tmp_path):
    in_tmp = tmp_path / "keep.txt"
    in_tmp.write_text("precious")
    tmp_path.chmod(0o777)
    program = _python(f"""
        import os, shutil
        for path in ({str(outside / "keep.txt")!r}, {str(in_tmp)!r}):
            assert os.path.exists(path), "cannot even see " + path  # hidden counts as contained too
            try:
                os.remove(path)
            except OSError:
                pass
        shutil.rmtree({str(outside)!r}, ignore_errors=True)
        assert not os.path.exists({str(outside / "keep.txt")!r}), "still there"
    """)
    result = run_program(program, "python")
    assert result.status == "failed"
    assert (outside / "keep.txt").read_text() == "precious" and in_tmp.read_text() == "precious"
    assert run_program(program, "python", isolate=False).passed  # without the sandbox it deletes
    assert not (outside / "keep.txt").exists()


def test_writing_outside_fails_in_python_and_cpp(outside):
    target = outside / "dropped.txt"
    python = _python(f"""
        with open({str(target)!r}, "w") as handle:
            handle.write("pwned")
    """)
    cpp = textwrap.dedent(f"""
        #include <cstdio>
        int main() {{
            FILE* f = std::fopen("{target}", "w");
            if (!f) return 1;
            std::fputs("pwned", f);
            return std::fclose(f);
        }}
    """)
    assert run_program(python, "python").status == "failed"
    if shutil.which("g++"):
        assert run_program(cpp, "cpp").status == "failed"
    assert not target.exists() and sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert run_program(python, "python", isolate=False).passed
    assert target.read_text() == "pwned"


@pytest.fixture
def server():
    """A TCP server on 127.0.0.1 that records every connection it accepts."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            accepted.append(connection.recv(100))
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join()
    listener.close()


def test_connecting_to_a_local_server_fails(server):
    port, accepted = server
    program = _python(f"""
        import socket
        with socket.create_connection(("127.0.0.1", {port}), timeout=3) as connection:
            connection.sendall(b"secret")
    """)
    assert run_program(program, "python").status == "failed"
    time.sleep(0.3)
    assert accepted == []
    assert run_program(program, "python", isolate=False).passed
    time.sleep(0.5)
    assert accepted == [b"secret"]


def _alive(marker: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_setsid_child_does_not_outlive_the_run():
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}.25"  # `sleep` takes a fractional time: a unique cmdline
    program = _python(f"""
        import subprocess
        subprocess.Popen(["setsid", "sleep", "{marker}"], start_new_session=True)
    """)
    assert run_program(program, "python").passed
    time.sleep(0.5)
    assert _alive(f"sleep {marker}") == []
    try:  # without the sandbox, the process-group kill misses a child in a session of its own
        assert run_program(program, "python", isolate=False).passed
        time.sleep(0.5)
        assert _alive(f"sleep {marker}")
    finally:
        _kill(_alive(f"sleep {marker}"))


def test_hundreds_of_children_are_capped_and_ended():
    marker = f"{uuid.uuid4().int % 10**6 + 2 * 10**6}.5"
    program = _python(f"""
        import os, sys
        started = 0
        for _ in range(500):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.execvp("sleep", ["sleep", "{marker}"])
            started += 1
        print(started)
        sys.exit(0 if started == 500 else 1)
    """)
    result = run_program(program, "python", timeout=20)
    assert result.status == "failed"  # the process cap stopped the loop
    time.sleep(0.5)
    assert _alive(f"sleep {marker}") == []  # and every child ended with the run


def test_a_well_behaved_program_still_passes_and_fails_normally():
    assert run_program("assert sum(range(5)) == 10\n", "python").passed
    assert run_program("assert sum(range(5)) == 11\n", "python").status == "failed"
    assert run_program("while True:\n    pass\n", "python", timeout=1).status == "timeout"


def test_missing_bubblewrap_is_one_clear_error(monkeypatch):
    isolation.sandbox_python.cache_clear()
    isolation._probe.cache_clear()
    monkeypatch.setattr(isolation.shutil, "which", lambda name: None)
    try:
        with pytest.raises(SpaceError, match="apt-get install bubblewrap.*--unsafe_execution true"):
            run_program("pass\n", "python")
        assert run_program("pass\n", "python", isolate=False).passed  # the explicit opt-out still runs
    finally:
        isolation.sandbox_python.cache_clear()
        isolation._probe.cache_clear()


def test_timing_runs_both_modes_on_canonical_solutions():
    from space.bench.execution import time_execution

    result = time_execution(["python"], problems=2)["python"]
    assert result["problems"] == 2 and result["passed_isolated"] == 2 and result["passed_unisolated"] == 2
    assert result["seconds_isolated"] > 0 and result["seconds_unisolated"] > 0
