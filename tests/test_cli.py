"""The `fgclip` command: every component is reachable, bad params fail in one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fgclip import cli
from tests.conftest import REPO_ROOT, tool_env


def test_help_lists_every_component(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in cli.COMPONENTS)


def test_a_command_loads_only_its_own_component() -> None:
    code = (
        "import sys; from fgclip import cli; cli.build_parser(['negatives', '--help']); "
        "print(sorted(m for m in sys.modules "
        "if m in ('fgclip.registry.cli', 'fgclip.data.negatives.cli', 'fgclip.eval.cli')))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=tool_env(), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['fgclip.data.negatives.cli']"


def test_invalid_params_fail_with_a_clear_message(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fgclip.cli",
            "--set",
            "qc.no_such_knob=1",
            "qc",
            "--images",
            "x",
            "--captions",
            "x",
            "--regions",
            "x",
            "--negatives",
            "x",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "invalid params" in result.stderr and "no_such_knob" in result.stderr
    assert "Traceback" not in result.stderr
