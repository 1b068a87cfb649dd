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
         "--model", "--device", "--medvram", "--lowvram", "--xformers", "--api", "--queue-size", "--allowed-hosts",
         "--cors-allow-origins"]  # fmt: skip


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


def test_a_share_link_keeps_working_through_the_host_and_origin_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The tunnel hands requests on with the link's own Host (and, from the page, its Origin)."""
    import gradio.networking

    link = "https://a1b2c3d4e5.gradio.live"
    monkeypatch.setattr(gradio.networking, "setup_tunnel", lambda *args, **kwargs: link)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = launch.parse_args(["--share", "--api", "--port", str(port), "--outputs-dir", str(tmp_path / "o"),
                              "--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path / "m")])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="atelier"):
        app = launch.serve(args, prevent_thread_lock=True)
    try:
        assert app.share_url == link
        through_tunnel = {"Host": "a1b2c3d4e5.gradio.live", "Origin": link}
        page = httpx.get(f"http://127.0.0.1:{port}/", headers=through_tunnel, timeout=30)
        assert page.status_code == 200
        api = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/png-info", json={"image": ""}, headers=through_tunnel)
        assert api.status_code == 422  # reached the route (no image given), not stopped at the door
        other = httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": "someone-else.gradio.live"}, timeout=30)
        assert other.status_code == 400
        assert link in caplog.text  # the banner says where the server is reachable
    finally:
        app.close()
