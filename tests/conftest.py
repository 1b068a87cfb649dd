"""Shared fixtures: one engine on the built-in demo model, reused across tests for speed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Tests talk to 127.0.0.1 only: no usage reports from Gradio or the hub client.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pipelines.engine import Engine
from pipelines.settings import EngineSettings


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def engine(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    outputs = tmp_path_factory.mktemp("outputs")
    engine = Engine(EngineSettings(models_dir=models_dir, outputs_dir=outputs, default_model="builtin:demo"))
    engine.load()
    return engine


@pytest.fixture
def square_scene() -> tuple[Image.Image, Image.Image]:
    """A red picture with a blue square, and a mask covering the square's centre (white = redraw)."""
    picture = Image.new("RGB", (128, 128), (200, 30, 30))
    ImageDraw.Draw(picture).rectangle([32, 32, 96, 96], fill=(20, 40, 220))
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle([48, 48, 80, 80], fill=255)
    return picture, mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a test server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
