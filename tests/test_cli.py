"""The command line answers without importing the heavy stack, and reports usage errors cleanly."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "monai", "highdicom", "pynetdicom", "skimage", "scipy")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backmice_vision", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_commands_without_heavy_imports() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from backmice_vision import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(out.getvalue()); print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    for command in ("info", "detect", "phantom", "train", "evaluate", "export", "demo"):
        assert command in proc.stdout


def test_usage_error_exit_code_2_without_traceback() -> None:
    proc = _run("detect")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--out" in proc.stderr


def test_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip().startswith("backmice ")
