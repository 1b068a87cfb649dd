"""The code base stays ruff-clean and keeps its dependency direction."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]


def test_types_check_clean() -> None:
    """mypy with the settings in pyproject.toml: a field changed in one place is flagged everywhere it is used."""
    done = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_the_engine_never_imports_the_ui() -> None:
    offenders = [
        path.name
        for path in (ROOT / "pipelines").rglob("*.py")
        if re.search(r"^\s*(import gradio|from gradio|from webui|import webui)", path.read_text(), re.M)
    ]
    assert offenders == []


def test_importing_the_engine_package_is_light() -> None:
    code = "import sys, pipelines, pipelines.requests, launch; print('torch' in sys.modules, 'gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.split() == ["False", "False"]
