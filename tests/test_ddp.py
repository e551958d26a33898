"""Distributed data parallel training on CPU (gloo): two processes started the way Lightning starts them.

One subprocess runs `moodtag train --devices 2 --strategy ddp` and then validates the best checkpoint on the same
two processes (tests/scaling_helpers.py). The oracle is the single-process `moodtag.training.predict` of the same
checkpoint, and sklearn's ROC-AUC on it.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scaling_helpers import make_corpus, tiny_config
from tagged_corpus import TAGS

HELPER = Path(__file__).with_name("scaling_helpers.py")
N_VALIDATION = 7  # odd: the distributed sampler pads two ranks to 4 + 4 with one repeated track


def launcher_environment() -> dict[str, str]:
    """This process's environment without any launcher's variables, so Lightning starts the processes itself."""
    prefixes = ("SLURM_", "TORCHELASTIC_", "PL_", "OMPI_", "PMI_")
    names = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(prefixes)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPER.parent), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    from moodtag.config import save_config

    tmp = tmp_path_factory.mktemp("ddp")
    root = make_corpus(tmp / "corpus", {"train": 10, "validation": N_VALIDATION}, seed=1)
    # patience 0: the first epoch without a strictly better validation ROC-AUC stops the run.
    config = tiny_config(root, tmp / "run", max_epochs=6, patience=0, lr=1e-2)
    save_config(config, tmp / "config.yaml")
    out = tmp / "ranks"
    out.mkdir()
    result = subprocess.run([sys.executable, str(HELPER), str(tmp / "config.yaml"), str(out)],
                            env=launcher_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, tmp / "run", out


def single_process_predictions(root: Path, run_dir: Path) -> tuple[list[str], np.ndarray]:
    from moodtag.training.run import predict

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return predict(run_dir, root / "splits" / "validation.tsv")
    finally:
        torch.set_num_threads(threads)


def validation_labels(root: Path) -> np.ndarray:
    from moodtag.data.splits import read_split

    return read_split(root / "splits" / "validation.tsv").labels(TAGS)


def sklearn_macro_roc_auc(labels: np.ndarray, logits: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    usable = (labels.sum(axis=0) > 0) & (labels.sum(axis=0) < len(labels))
    return float(roc_auc_score(labels[:, usable], torch.sigmoid(torch.from_numpy(logits)).numpy()[:, usable]))


@pytest.mark.slow
def test_gathered_validation_predictions_equal_a_single_process_run(ddp_run):
    root, run_dir, out = ddp_run
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    track_ids, reference = single_process_predictions(root, run_dir)
    assert len(track_ids) == N_VALIDATION
    for rank in ranks:
        assert int(rank["world_size"]) == 2 and int(rank["samples_per_rank"]) == (N_VALIDATION + 1) // 2
        # Every track exactly once, in split order, although the sampler gave 2 x 4 = 8 rows.
        np.testing.assert_array_equal(rank["index"], np.arange(N_VALIDATION))
        np.testing.assert_allclose(rank["logits"], reference, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ranks[0]["logits"], ranks[1]["logits"])


@pytest.mark.slow
def test_logged_validation_roc_auc_is_the_full_set_roc_auc(ddp_run):
    root, run_dir, out = ddp_run
    _, reference = single_process_predictions(root, run_dir)
    expected = sklearn_macro_roc_auc(validation_labels(root), reference)
    for r in range(2):
        assert float(np.load(out / f"rank{r}.npz")["roc_auc"]) == pytest.approx(expected, abs=1e-6)
    # The training run logged the same number for its best epoch (the weights in best.ckpt).
    info = json.loads((run_dir / "run.json").read_text())
    assert info["best"]["val_roc_auc"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_checkpoints_and_metrics_written_once_and_early_stopping_in_sync(ddp_run):
    _, run_dir, _ = ddp_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # One row per epoch (rank 0 alone writes), and both ranks stopped together: a rank that went on alone would
    # have hung in its next collective and the launch above would not have returned 0.
    assert [int(row["epoch"]) for row in rows] == list(range(info["epochs"]))
    assert info["stopped_early"] and info["epochs"] < 6, info
    scores = [float(row["val_roc_auc"]) for row in rows]
    assert scores[-1] <= max(scores[:-1])
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == info["best_epoch"] == int(np.argmax(scores))
