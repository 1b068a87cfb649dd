"""The README's Python example runs as written, and its two commands are what CI runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_engine_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = README.split("## Using the engine from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the example writes circle.png and outputs/ where it runs
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "circle.png").is_file()
    assert namespace["result"].seeds == [42, 43]
    saved = namespace["inpainted"].paths
    assert len(saved) == 1 and saved[0].resolve().is_relative_to(tmp_path / "outputs") and saved[0].is_file()


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)\n```", README.split("## Two commands", 1)[1], re.S)[:2]
    assert len(commands) == 2 and "launch.py" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
