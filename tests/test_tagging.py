"""Tagger: chunk and timeline arithmetic, aggregation against a hand computation, thresholds, bad input, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moodtag.audio import write_audio
from moodtag.bundle import ExportMember, write_bundle
from moodtag.cli import main
from moodtag.errors import AudioError
from moodtag.features import FeatureParams, TrackFeatures, compute_features
from moodtag.features.mel import n_mel_steps
from moodtag.models import MODEL_PRESETS, MoodCRNN
from moodtag.tagging import Tagger, chunk_windows, timeline_windows, window_seconds
from moodtag.writers import read_records

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 44100
TAGS = ["mood/theme---calm", "mood/theme---dark", "mood/theme---happy", "mood/theme---sad"]
STEP = 512 * 10 / SR  # seconds per pooled mel step


def tiny_model(seed: int, *, use_hpcp: bool = True) -> MoodCRNN:
    torch.manual_seed(seed)
    config = MODEL_PRESETS["tiny"]
    if not use_hpcp:
        config = type(config).from_dict({**config.to_dict(), "use_hpcp": False})
    return MoodCRNN(config, len(TAGS)).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, MoodCRNN]:
    return {"short": tiny_model(1), "long": tiny_model(2), "mel_only": tiny_model(3, use_hpcp=False)}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, models) -> Path:
    members = [ExportMember("short", "short", 80, models["short"]), ExportMember("long", "long", 160, models["long"])]
    return write_bundle(tmp_path_factory.mktemp("bundles") / "ensemble", members, tags=TAGS,
                        thresholds=np.full(len(TAGS), 0.5), feature_params=FeatureParams(), chunk_steps=80, alpha=0.7)


def tone(seconds: float, *, rate: int = SR, channels: int = 0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    signal = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    return np.stack([signal * (1 + 0.1 * c) for c in range(channels)], axis=1) if channels else signal


# ---------------------------------------------------------------------------------------------------------------
# Chunks and timeline


def test_chunk_windows_follow_training():
    assert chunk_windows(200, 80) == [(0, 80), (80, 160)]  # the 40-step tail is left out, as in training
    assert chunk_windows(160, 80) == [(0, 80), (80, 160)]
    assert chunk_windows(30, 80) == [(0, 80)]  # one zero-padded chunk


def test_timeline_adds_a_chunk_ending_at_the_last_step():
    assert timeline_windows(200, 80) == [(0, 80), (80, 160), (120, 200)]
    assert timeline_windows(160, 80) == [(0, 80), (80, 160)]
    assert timeline_windows(30, 80) == [(0, 80)]


def test_window_seconds_in_mel_steps_and_last_end_is_the_duration():
    spans = window_seconds([(0, 80), (80, 160), (120, 200)], 23.2, STEP)
    assert spans[0] == pytest.approx((0.0, 80 * STEP)) and 80 * STEP == pytest.approx(9.2880, abs=1e-4)
    assert spans[1] == pytest.approx((80 * STEP, 160 * STEP))
    assert spans[2] == pytest.approx((120 * STEP, 23.2))
    assert window_seconds([(0, 80)], 2.5, STEP) == [(0.0, 2.5)]  # padded clip: the chunk is the clip


def test_timeline_of_a_real_signal_covers_the_track(ensemble):
    audio = tone(21.0)
    result = Tagger.load(ensemble).tag(audio, sample_rate=SR, timeline=True)
    n_steps = n_mel_steps(audio.size)
    assert n_steps == 181 and len(result.timeline) == 3
    starts = [segment.start for segment in result.timeline]
    assert starts == pytest.approx([0.0, 80 * STEP, (n_steps - 80) * STEP])
    assert result.timeline[-1].end == result.duration == pytest.approx(21.0)
    assert not result.padded


# ---------------------------------------------------------------------------------------------------------------
# Aggregation and thresholds, against a hand computation with the models themselves


def hand_probabilities(models, features: TrackFeatures, alpha: float) -> np.ndarray:
    mel = torch.from_numpy(features.mel.astype(np.float32))
    hpcp = torch.from_numpy(features.hpcp.astype(np.float32))

    def cut(x, start, length):
        piece = x[:, start : start + length]
        return torch.nn.functional.pad(piece, (0, length - piece.shape[1]))[None]

    with torch.no_grad():
        n_chunks = max(1, mel.shape[1] // 80)
        chunk_logits = torch.cat([models["short"](cut(mel, 80 * i, 80), cut(hpcp, 200 * i, 200)) for i in range(n_chunks)])
        short = torch.sigmoid(chunk_logits.mean(0))
        long = torch.sigmoid(models["long"](cut(mel, 0, 160), cut(hpcp, 0, 400))[0])
    return (alpha * short + (1 - alpha) * long).double().numpy()


@pytest.mark.parametrize("seconds", [2.0, 21.0])
def test_ensemble_probabilities_match_hand_computation(ensemble, models, seconds):
    features = compute_features(tone(seconds, seed=int(seconds)))
    result = Tagger.load(ensemble).tag_features(features)
    expected = hand_probabilities(models, features, 0.7)
    np.testing.assert_allclose([result.probabilities[t] for t in TAGS], expected, rtol=0, atol=1e-6)
    assert result.padded == (seconds < 80 * STEP)


def test_tags_are_strictly_above_their_thresholds(ensemble, tmp_path, models):
    features = compute_features(tone(12.0))
    p = np.array([Tagger.load(ensemble).tag_features(features).probabilities[t] for t in TAGS])
    # Tag 0 exactly at its threshold (not above), tag 1 just below it, tag 2 never, tag 3 always.
    thresholds = np.array([p[0], p[1] - 1e-6, 1.0, 0.0])
    members = [ExportMember("short", "short", 80, models["short"]), ExportMember("long", "long", 160, models["long"])]
    bundle = write_bundle(tmp_path / "b", members, tags=TAGS, thresholds=thresholds, feature_params=FeatureParams(),
                          chunk_steps=80, alpha=0.7)
    result = Tagger.load(bundle, top_k=2).tag_features(features)
    expected = sorted([TAGS[1], TAGS[3]], key=lambda tag: -result.probabilities[tag])
    assert result.tags == expected
    assert [tag for tag, _ in result.top_k] == sorted(TAGS, key=lambda tag: -result.probabilities[tag])[:2]


def test_arrays_are_downmixed_and_resampled_like_files(ensemble, tmp_path):
    tagger = Tagger.load(ensemble)
    stereo = tone(10.0, rate=22050, channels=2)
    write_audio(tmp_path / "stereo.wav", stereo, 22050, subtype="FLOAT")
    from_file = tagger.tag(tmp_path / "stereo.wav")
    from_array = tagger.tag(stereo, sample_rate=22050)
    assert from_file.path == str(tmp_path / "stereo.wav") and from_array.path is None
    assert from_array.duration == pytest.approx(10.0)
    for tag in TAGS:
        assert from_array.probabilities[tag] == pytest.approx(from_file.probabilities[tag], abs=1e-6)
    with pytest.raises(AudioError, match="NaN"):
        tagger.tag(np.full(100, np.nan, np.float32), sample_rate=SR)


def test_mel_only_model_needs_no_hpcp(tmp_path, models):
    bundle = write_bundle(tmp_path / "mel", [ExportMember("model", "short", 80, models["mel_only"])], tags=TAGS,
                          thresholds=np.full(len(TAGS), 0.5), feature_params=FeatureParams(), chunk_steps=80)
    features = compute_features(tone(10.0))
    result = Tagger.load(bundle).tag_features(features)
    with torch.no_grad():
        expected = torch.sigmoid(models["mel_only"](torch.from_numpy(features.mel[None, :, :80]))[0]).numpy()
    np.testing.assert_allclose([result.probabilities[t] for t in TAGS], expected, atol=1e-6)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_streamed_features_equal_whole_track_features(tmp_path, rate):
    from moodtag.audio import load_audio
    from moodtag.streaming import GRID_SAMPLES, file_features

    write_audio(tmp_path / "long.flac", tone(23.0, rate=rate, channels=2) * np.linspace(0.2, 1, int(23 * rate))[:, None], rate)
    whole = compute_features(load_audio(tmp_path / "long.flac"))
    # Segments of 4.6 s: five segment joins inside the track, the last segment shorter than the others.
    streamed = file_features(tmp_path / "long.flac", stream_above_seconds=0, segment_samples=20 * GRID_SAMPLES)
    np.testing.assert_array_equal(streamed.mel, whole.mel)
    np.testing.assert_array_equal(streamed.hpcp, whole.hpcp)
    assert streamed.duration == whole.duration


# ---------------------------------------------------------------------------------------------------------------
# Bad input and the command line


@pytest.fixture(scope="module")
def salted(tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """A folder of good and bad files: (folder, names that must be tagged, names that must fail)."""
    folder = tmp_path_factory.mktemp("salted")
    write_audio(folder / "song.ogg", tone(12.0))
    write_audio(folder / "stereo.flac", tone(10.0, channels=2))
    write_audio(folder / "six-channels.wav", tone(10.0, rate=48000, channels=6), 48000)
    write_audio(folder / "odd-rate.wav", tone(10.0, rate=11025), 11025)
    write_audio(folder / "silent.wav", np.zeros(3 * SR, np.float32))
    write_audio(folder / "very-short.wav", tone(0.05))
    (folder / "sub").mkdir()
    write_audio(folder / "sub" / "nested.flac", tone(9.0))
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "text.mp3").write_text("this is not audio\n" * 50)
    (folder / "notes.txt").write_text("not an audio extension: never picked up\n")
    good = (folder / "song.ogg").read_bytes()
    (folder / "truncated.flac").write_bytes((folder / "stereo.flac").read_bytes()[:30])
    assert len(good) > 0
    tagged = {"song.ogg", "stereo.flac", "six-channels.wav", "odd-rate.wav", "silent.wav", "very-short.wav", "sub/nested.flac"}
    failed = {"empty.mp3", "text.mp3", "truncated.flac"}
    return folder, tagged, failed


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table"])
def test_cli_tags_a_salted_folder_in_every_format(ensemble, salted, tmp_path, capsys, fmt):
    folder, tagged, failed = salted
    out = tmp_path / f"tags.{fmt}"
    failures = tmp_path / "failures.tsv"
    code = main(["tag", str(folder), str(tmp_path / "missing.ogg"), "--model", str(ensemble), "--format", fmt,
                 "--output", str(out), "--failures", str(failures), "--workers", "0", "--timeline", "-q"])
    assert code == 1
    names = lambda paths: {str(Path(p).relative_to(folder)) for p in paths if Path(p).is_relative_to(folder)}
    failed_paths = [line.split("\t")[0] for line in failures.read_text().splitlines()]
    assert names(failed_paths) == failed and str(tmp_path / "missing.ogg") in failed_paths
    stderr = capsys.readouterr().err
    assert all(f"{folder / name}:" in stderr for name in failed) and "missing.ogg: file not found" in stderr
    assert not Path(str(out) + ".partial").exists()
    if fmt == "table":
        text = out.read_text()
        assert all(str(folder / name) in text for name in tagged) and "0:00*" in text
        return
    records = read_records(out, fmt)
    assert names(r["path"] for r in records) == tagged
    padded = {str(Path(r["path"]).relative_to(folder)) for r in records if r["padded"]}
    assert padded == {"silent.wav", "very-short.wav", "sub/nested.flac"}


def test_cli_resume_tags_only_what_is_missing(ensemble, salted, tmp_path, capsys):
    folder, tagged, _ = salted
    out = tmp_path / "tags.jsonl"
    args = ["tag", str(folder), "--model", str(ensemble), "--output", str(out), "--workers", "0", "-q"]
    main(args)
    lines = out.read_text().splitlines(keepends=True)
    # As if killed after three tracks: only FILE.partial, its last record cut short.
    Path(str(out) + ".partial").write_text("".join(lines[:3]) + lines[3][:25])
    out.unlink()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 1  # the bad files fail again
    assert f"{len(tagged) - 3} tagged, 3 already done" in capsys.readouterr().err
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert sorted(paths) == sorted(json.loads(line)["path"] for line in lines) and len(set(paths)) == len(paths)


def test_cli_writes_jsonl_to_stdout_when_piped(ensemble, tmp_path, capsys):
    write_audio(tmp_path / "a.wav", tone(3.0))
    list_file = tmp_path / "list.txt"
    list_file.write_text("a.wav\n# a comment\n")
    assert main(["tag", str(list_file), "--model", str(ensemble), "--workers", "0", "--top-k", "1", "-q"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["path"] == str(tmp_path / "a.wav") and len(record["top_k"]) == 1 and record["padded"]
    assert set(record["probabilities"]) == set(TAGS)
    (tmp_path / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF\0")
    assert main(["tag", str(tmp_path / "cover.jpg"), "--model", str(ensemble), "--workers", "0", "-q"]) == 1
    assert "cover.jpg: neither an audio file" in capsys.readouterr().err


def test_tag_command_starts_its_workers_before_importing_torch(ensemble, tmp_path):
    """Everything `moodtag tag` does before its feature workers start (parse, load and check the bundle, find the
    files) imports no torch, Lightning or librosa, so the workers decode while the model loads."""
    write_audio(tmp_path / "a.wav", tone(1.0))
    script = ("import sys; from moodtag.cli import build_parser; from moodtag.tagging import Tagger, find_audio; "
              "build_parser(); Tagger.load(sys.argv[1]); find_audio([sys.argv[2]]); "
              "print(sorted(m for m in ('torch', 'lightning', 'librosa', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, str(ensemble), str(tmp_path)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_worker_processes_give_the_same_results_in_order(ensemble, salted, monkeypatch):
    from moodtag.numerics import PINNED_ENV

    # The workers run the model, with the kernels their environment picks; this process loaded torch unpinned (a
    # CLI test may have pinned os.environ since), so the workers must be unpinned too for the floats to agree.
    for key in PINNED_ENV:
        monkeypatch.delenv(key, raising=False)
    folder = salted[0]
    paths = [str(folder / name) for name in ("song.ogg", "empty.mp3", "six-channels.wav", "text.mp3", "very-short.wav")]
    tagger = Tagger.load(ensemble)
    errors: list[str] = []
    in_process = [r.to_dict() for r in tagger.tag_many(paths, workers=0, on_error=lambda p, r: None)]
    workers = [r.to_dict() for r in tagger.tag_many(paths, workers=1, on_error=lambda p, r: errors.append(p))]
    assert workers == in_process
    assert errors == [str(folder / "empty.mp3"), str(folder / "text.mp3")]
    with pytest.raises(AudioError, match="empty file"):
        list(tagger.tag_many([str(folder / "empty.mp3")]))


def test_device_cpu_tags_and_cuda_without_a_gpu_is_one_clear_error(ensemble, tmp_path, capsys):
    write_audio(tmp_path / "a.wav", tone(11.0))
    args = ["tag", str(tmp_path / "a.wav"), "--model", str(ensemble), "--workers", "0", "-q"]
    assert main(args + ["--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    expected = Tagger.load(ensemble, device="cpu").tag(tmp_path / "a.wav")
    assert on_cpu["probabilities"] == pytest.approx(expected.probabilities, rel=1e-5)  # written with 6 digits
    assert main(args + ["--device", "gpu0"]) == 2
    assert capsys.readouterr().err == "moodtag: error: unknown device 'gpu0'; choose cpu, cuda or cuda:N\n"
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the error for a missing one cannot be shown here")
    for backend in ("auto", "torch"):
        assert main(args + ["--device", "cuda", "--backend", backend]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert captured.err.startswith("moodtag: error: device cuda: PyTorch sees no CUDA GPU")


# ---------------------------------------------------------------------------------------------------------------
# Pieces: long files shared by the workers, the same floats however they run


def test_track_pieces_depend_on_the_length_alone():
    from moodtag.tagging import track_pieces

    assert track_pieces(100, 160) == [(0, 100)]
    assert track_pieces(319, 160) == [(0, 319)]  # shorter than two pieces: one
    assert track_pieces(320, 160) == [(0, 160), (160, 320)]
    assert track_pieces(602, 160) == [(0, 160), (160, 320), (320, 602)]  # the last takes the remainder


def test_piece_steps_default_and_validation(ensemble):
    from moodtag.bundle import load_bundle
    from moodtag.errors import MoodtagError

    bundle = load_bundle(ensemble)
    assert Tagger(bundle).piece_steps == 32 * 80
    assert Tagger(bundle, piece_steps=240).piece_steps == 240
    for bad in (120, 80):  # not whole chunks; shorter than the long member's 160 steps
        with pytest.raises(MoodtagError, match="piece_steps"):
            Tagger(bundle, piece_steps=bad)


@pytest.mark.slow
def test_files_split_into_pieces_give_the_floats_of_one_process(ensemble, tmp_path, monkeypatch):
    from moodtag.bundle import load_bundle
    from moodtag.numerics import PINNED_ENV

    for key in PINNED_ENV:  # as test_worker_processes_give_the_same_results_in_order
        monkeypatch.delenv(key, raising=False)
    signal = tone(70.0, channels=2, seed=3) * np.linspace(0.2, 1, int(70 * SR), dtype=np.float32)[:, None]
    write_audio(tmp_path / "long.flac", signal)
    write_audio(tmp_path / "long.ogg", signal)  # not split: Vorbis does not seek exactly
    data = (tmp_path / "long.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) * 2 // 3])  # the header promises more than is there
    paths = [str(tmp_path / name) for name in ("long.flac", "long.ogg", "cut.flac")]
    tagger = Tagger(load_bundle(ensemble), piece_steps=160)
    assert [(job.path[-9:], job.index, job.count) for job in tagger._jobs(paths)] == [
        ("long.flac", 0, 3), ("long.flac", 1, 3), ("long.flac", 2, 3), ("/long.ogg", 0, 1),
        ("/cut.flac", 0, 3), ("/cut.flac", 1, 3), ("/cut.flac", 2, 3)]

    def run(workers):
        errors = []
        results = [r.to_dict() for r in tagger.tag_many(paths, workers=workers, timeline=True,
                                                         on_error=lambda p, r: errors.append((p, r)))]
        return results, errors

    one_process, two_workers = run(0), run(2)
    assert two_workers == one_process
    alone = []
    for path in paths:
        try:
            alone.append(tagger.tag(path, timeline=True).to_dict())
        except AudioError:
            pass
    assert one_process[0] == alone
    assert len(one_process[0][0]["timeline"]) == 602 // 80 + 1
    # Pieces change only how chunks are batched: the default pieces agree to float rounding.
    default = Tagger.load(ensemble).tag(paths[0]).probabilities
    assert default == pytest.approx(one_process[0][0]["probabilities"], abs=1e-6)
