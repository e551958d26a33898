"""moodtag.pool (shards, the worker pool), moodtag.failures and moodtag.errors: the shared mechanisms."""
from __future__ import annotations

import pytest

from moodtag.errors import BundleError, ConfigError, DataError, FeatureError, MergeError, ModelError, MoodtagError
from moodtag.failures import read_failures, write_failures
from moodtag.pool import Crashed, ShardError, parse_shard, pool_map


def test_one_parse_shard_for_every_command(monkeypatch):
    assert parse_shard(None) == (0, 1) and parse_shard("2/5") == (2, 5)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard("auto") == (3, 4)
    with pytest.raises(ShardError) as err:
        parse_shard("5/5")
    # Caught as before by the extract and tag commands (ConfigError) and by pseudo-labelling (DataError).
    assert isinstance(err.value, ConfigError) and isinstance(err.value, DataError)


def test_pool_map_in_process_keeps_order_and_waits_once():
    calls = []
    results = list(pool_map(lambda x: x * x, [3, 1, 2], workers=0, while_waiting=lambda: calls.append("model")))
    assert results == [(3, 9), (1, 1), (2, 4)] and calls == ["model"]
    assert Crashed().reason.startswith("worker process died")


def test_pool_map_reads_its_items_as_it_submits_them():
    """A lazily planned list (the tagger reads each file's header as it plans) starts at once: with 1 worker and 2
    in flight, the third item is read only after the first result."""
    import math

    read = []

    def items():
        for x in (4.0, 9.0, 16.0, 25.0):
            read.append(x)
            yield x

    outcomes = pool_map(math.sqrt, items(), workers=1, in_flight=2, ordered=True)
    assert next(outcomes) == (4.0, 2.0) and read == [4.0, 9.0]
    assert list(outcomes) == [(9.0, 3.0), (16.0, 4.0), (25.0, 5.0)] and len(read) == 4


def test_one_failures_format(tmp_path):
    path = write_failures(tmp_path / "failures.tsv", [("/a/x.mp3", "empty\tfile"), ("/a/y.ogg", "bad", "y.ogg")])
    assert path.read_text().splitlines()[0] == "file\treason\ttrack_id"
    assert read_failures(path) == [("/a/x.mp3", "empty file", ""), ("/a/y.ogg", "bad", "y.ogg")]
    assert read_failures(write_failures(tmp_path / "none.tsv", [])) == []


def test_one_error_hierarchy_still_catchable_as_before():
    for error in (BundleError, FeatureError, ModelError, MergeError):
        assert issubclass(error, MoodtagError)
    assert issubclass(FeatureError, ValueError) and issubclass(ModelError, ValueError)
    assert issubclass(MergeError, DataError)
    assert "2 tracks in more than one part" in str(MergeError({"a": ["p", "q"], "b": ["p", "q"]}, [], [], []))
