"""Shared fixtures: paths into ../shared (optional oracles) and seeded RNGs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOODTAG_SHARED", REPO.parent / "shared"))
MUSIC = Path(os.environ.get("MOODTAG_MUSIC", REPO.parent / "music"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference folder not found at {SHARED}")
    return SHARED


@pytest.fixture
def real_music() -> list[Path]:
    """Real OGG tracks from shared/scripts/get-real-music.sh, if fetched to ../music (or $MOODTAG_MUSIC)."""
    tracks = sorted(MUSIC.glob("*.ogg"))
    if not tracks:
        # CI fetches the music and sets MOODTAG_REQUIRE_MUSIC, so there a missing folder fails instead of skipping.
        message = f"no real music at {MUSIC}; run shared/scripts/get-real-music.sh {MUSIC}"
        if os.environ.get("MOODTAG_REQUIRE_MUSIC"):
            pytest.fail(message)
        pytest.skip(message)
    return tracks


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the CI machine's two cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
