"""Training and inference for the paper's teachers and students.

Public API (imported lazily, so `moodtag.training.pseudo_label` and friends do not pull in Lightning):
    train(config, *, resume=False, quiet=False) -> run_dir
    load_model(run_dir) -> (MoodCRNN, RunConfig, tags)
    predict(run_dir, split_tsv_or_track_ids, store=None) -> (track_ids, logits)
    predict_split(run_dir, "test" | "validation" | "train" | PATH.tsv) -> summary (writes predictions/)
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "train": "run", "load_model": "run", "predict": "run", "predict_split": "run", "run_dir_of": "run",
    "teacher_run_dir": "run", "pseudo_labels_path": "run", "read_run_info": "run",
    "TaggingModule": "module", "masked_bce_with_logits": "module", "track_logits": "aggregate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
