"""A paper-size short + long HPCP ensemble bundle with random weights, for timing `moodtag tag` without training.

    python benchmarks/paper_bundle.py OUT [--no-onnx] [--seed 0]

Both members are the "paper" preset with HPCP (configs/paper: short = 80-step chunks, long = the first 1600 steps),
tagging MTG-Jamendo's 56 mood/theme tags with alpha 0.5 and every threshold 0.5. Speed does not depend on the
weights, so the bundle times tagging as a trained `moodtag export runs/ensemble --onnx` would; its tags mean nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from moodtag.bundle import ExportMember, write_bundle
from moodtag.config import DataConfig
from moodtag.features import FeatureParams
from moodtag.models import MODEL_PRESETS, MoodCRNN
from moodtag.mtg_jamendo_stats import TAG_FREQUENCY


def write_paper_bundle(out: Path, *, onnx: bool = True, seed: int = 0) -> Path:
    tags = list(TAG_FREQUENCY)
    data = DataConfig()
    torch.manual_seed(seed)
    members = [ExportMember(mode, mode, steps, MoodCRNN(MODEL_PRESETS["paper"], len(tags)).eval())
               for mode, steps in (("short", data.chunk_steps), ("long", data.long_steps))]
    return write_bundle(out, members, tags=tags, thresholds=np.full(len(tags), 0.5), feature_params=FeatureParams(),
                        chunk_steps=data.chunk_steps, alpha=0.5, onnx=onnx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="bundle folder to write (replaced when it is a bundle)")
    parser.add_argument("--no-onnx", action="store_true", help="PyTorch weights only (no model.onnx)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_paper_bundle(args.out, onnx=not args.no_onnx, seed=args.seed))


if __name__ == "__main__":
    main()
