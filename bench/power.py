"""The power tools' costs, on the built-in demo model, against raw diffusers in the same run:

- the hires fix (64 -> 128 px, Lanczos) vs the same two passes written by hand (target <= 1.05x);
- LoRA load + apply + remove per job vs a 20-step picture (target < 5%).

    python bench/power.py            # about a minute on a 2-core CPU
    python bench/power.py --runs 7   # steadier medians

Each part also runs alone (``bench/power_hires.py``, ``bench/power_lora.py``, with more options).
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import power_hires
import power_lora

from pipelines.engine import Engine
from pipelines.settings import EngineSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side after a warm-up (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as models, tempfile.TemporaryDirectory() as outputs:
        engine = Engine(
            EngineSettings(models_dir=Path(models), outputs_dir=Path(outputs), default_model=power_hires.MODEL)
        )
        try:
            hires = power_hires.measure(engine, args.runs)
        finally:
            engine.close()
    with torch.no_grad():
        lora = power_lora.demo_figures(args.runs)
    fused = lora["fused"]
    print(
        f"hires fix {hires['size']}: raw diffusers {hires['raw_s']:.3f} s, Atelier {hires['ours_s']:.3f} s, "
        f"ratio {hires['ratio']:.3f} (target <= 1.05); same pixels: {hires['same_pixels']}"
    )
    print(
        f"LoRA ({lora['lora_layers']} layers) per job: apply {fused['apply_s'] * 1000:.1f} ms + remove "
        f"{fused['remove_s'] * 1000:.1f} ms = {fused['job_share']:.1%} of a {power_lora.STEPS}-step picture "
        f"({lora['picture_s']:.3f} s), {fused['job_and_steps_share']:.1%} with the steps' extra (target < 5%)"
    )
    print(json.dumps({"hires": hires, "lora": lora}))


if __name__ == "__main__":
    main()
