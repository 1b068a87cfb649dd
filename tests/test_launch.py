"""Launch flags: help, credentials, warnings, and a share link that cannot be made."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import launch

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--port", "--listen", "--share", "--auth", "--auth-file", "--models-dir", "--outputs-dir", "--data-dir",
         "--model", "--device", "--medvram", "--lowvram", "--xformers", "--api", "--queue-size"]  # fmt: skip


def test_help_lists_every_flag_and_is_quick() -> None:
    done = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    missing = [flag for flag in FLAGS if flag not in done.stdout]
    assert missing == []


def test_credentials_come_from_flags_and_file(tmp_path: Path) -> None:
    auth_file = tmp_path / "users.txt"
    auth_file.write_text("# artists\nana:pa:ss\n\nbo:b\n")
    args = launch.parse_args(["--auth", "me:pw", "--auth-file", str(auth_file)])
    assert launch.credentials(args) == [("me", "pw"), ("ana", "pa:ss"), ("bo", "b")]
    with pytest.raises(SystemExit, match="USER:PASS"):
        launch.credentials(launch.parse_args(["--auth", "nopassword"]))


def test_a_failed_share_link_is_reported_and_the_page_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import gradio.networking

    def no_tunnel(*args: object, **kwargs: object) -> str:
        raise OSError("network is unreachable")  # what an offline machine answers

    monkeypatch.setattr(gradio.networking, "setup_tunnel", no_tunnel)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = launch.parse_args(["--share", "--port", str(port), "--outputs-dir", str(tmp_path / "o"),
                              "--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path / "m")])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="atelier"):
        app = launch.serve(args, prevent_thread_lock=True)
    try:
        assert app.share_url is None
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
        messages = " ".join(record.getMessage() for record in caplog.records)
        assert "no public link" in messages
        assert "without --auth" in messages
    finally:
        app.close()
