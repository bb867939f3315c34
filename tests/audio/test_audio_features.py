import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hmic.audio.decoding import AudioError, FrontendConfig, decode, load_wave
from hmic.audio.logmel import clip_features, logmel_of_wave
from hmic.errors import HmicError
from hmic.data.features import FeatureStore, featurize

SR = 16_000


def slaney_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(hz < min_log_hz, hz / f_sp, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep)


def slaney_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0
    return np.where(mel < min_log_mel, mel * f_sp, min_log_hz * np.exp(logstep * (mel - min_log_mel)))


def reference_logmel(x, n_fft=512, hop=160, n_mels=64, fmin=50.0, fmax=8000.0, sr=SR):
    """An independent numpy log-mel: reflect-padded STFT, periodic Hann, power 2, Slaney filterbank
    built from its formula with Slaney area normalisation, 10·log10(max(x, 1e-10)), no top-dB."""
    x = np.pad(np.asarray(x, dtype=np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(x) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i * hop:i * hop + n_fft] * window for i in range(n_frames)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 257)
    fft_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    hz = slaney_hz(np.linspace(slaney_mel(fmin), slaney_mel(fmax), n_mels + 2))
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for i in range(n_mels):
        lower = (fft_hz - hz[i]) / (hz[i + 1] - hz[i])
        upper = (hz[i + 2] - fft_hz) / (hz[i + 2] - hz[i + 1])
        fb[:, i] = np.maximum(0, np.minimum(lower, upper)) * 2.0 / (hz[i + 2] - hz[i])
    return 10 * np.log10(np.maximum(power @ fb, 1e-10))


def tone_mix(sr, seconds=10.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t) + 0.1 * np.sin(2 * np.pi * 4100 * t)) * np.exp(-t / 5)


def signals():
    """(name, signal, broadband). Broadband signals are compared on every bin."""
    t = np.arange(10 * SR) / SR
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(len(t)).clip(-3, 3) / 3
    yield "noise", 0.3 * noise, True
    yield "tones+noise", tone_mix(SR) + 0.02 * noise, True
    yield "sine", 0.5 * np.sin(2 * np.pi * 440 * t), False
    yield "chirp", 0.4 * np.sin(2 * np.pi * (100 + 300 * t) * t), False  # 100 Hz → 6.1 kHz
    yield "silence-then-tone", np.concatenate([np.zeros(SR), 0.8 * np.sin(2 * np.pi * 3000 * t[:-SR])]), False


@pytest.mark.parametrize("name, x, broadband", list(signals()), ids=[s[0] for s in signals()])
def test_frontend_matches_an_independent_numpy_reference(name, x, broadband):
    import torch

    x = x.astype(np.float32)
    ours = logmel_of_wave(torch.from_numpy(x)).numpy()
    ref = reference_logmel(x)
    assert ours.shape == ref.shape == (1001, 64)
    if broadband:
        assert np.abs(ours - ref).max() < 1e-3
    else:
        # A pure tone puts bins >70 dB below the frame's peak, where float32 FFT round-off shows (which
        # CNN14's own float32 front-end shares); every bin within 70 dB of its frame's peak must match.
        near = ref >= ref.max(axis=1, keepdims=True) - 70
        assert near.mean() > 0.08
        assert np.abs(ours - ref)[near].max() < 1e-3


def test_44k_stereo_and_16k_mono_give_nearly_the_same_features(tmp_path):
    left = tone_mix(44_100)
    stereo = np.stack([left * 1.2, left * 0.8], axis=1)  # mean = left
    sf.write(tmp_path / "a.wav", stereo.astype(np.float32), 44_100, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", tone_mix(SR).astype(np.float32), SR, subtype="FLOAT")
    a, b = clip_features(tmp_path / "a.wav"), clip_features(tmp_path / "b.wav")
    loud = b > -60
    loud[:2] = loud[-2:] = False  # the resampler's edge effects touch the first and last frames only
    assert loud.mean() > 0.05
    assert np.abs(a - b)[loud].mean() < 0.01
    assert np.abs(a - b)[loud].max() < 0.05


def make_files(tmp_path):
    rng = np.random.default_rng(1)
    x = (0.5 * rng.standard_normal((SR * 10, 1))).clip(-1, 1).astype(np.float32)
    files = {}
    files["corrupt"] = tmp_path / "corrupt.ogg"
    files["corrupt"].write_bytes(b"OggS" + rng.bytes(2000))
    files["empty"] = tmp_path / "empty.wav"
    files["empty"].write_bytes(b"")
    nan = x.copy()
    nan[100] = np.nan
    files["nan"] = tmp_path / "nan.wav"
    sf.write(files["nan"], nan, SR, subtype="FLOAT")
    files["pcm8"] = tmp_path / "pcm8.wav"
    sf.write(files["pcm8"], x, SR, subtype="PCM_U8")
    files["pcm24"] = tmp_path / "pcm24.wav"
    sf.write(files["pcm24"], x, SR, subtype="PCM_24")
    files["float"] = tmp_path / "float.wav"
    sf.write(files["float"], x, SR, subtype="FLOAT")
    files["six"] = tmp_path / "six.flac"
    sf.write(files["six"], np.repeat(x, 6, axis=1) * 0.5, SR)
    files["short"] = tmp_path / "short.wav"
    sf.write(files["short"], x[:SR], SR)
    files["long"] = tmp_path / "long.ogg"
    sf.write(files["long"], np.concatenate([x, x, x]), SR, format="OGG", subtype="VORBIS")
    return files


def test_featurize_survives_bad_files_and_handles_odd_formats(tmp_path):
    files = make_files(tmp_path)
    keys = sorted(files)
    summary = featurize(keys, [files[k] for k in keys], tmp_path / "work", workers=2, progress=False)
    assert (summary.done, summary.failed) == (len(keys) - 3, 3)
    with open(summary.folder / "failures.csv") as f:
        failures = {r["sample_key"]: r["error"] for r in csv.DictReader(f)}
    assert set(failures) == {"corrupt", "empty", "nan"}
    assert "no samples" in failures["empty"] or "could not be decoded" in failures["empty"]
    assert "NaN" in failures["nan"]
    store = FeatureStore.open(tmp_path / "work")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = store.usable(keys, "train")
    assert set(usable) == set(keys) - set(failures)
    assert any("corrupt" in str(w.message) and "left out" in str(w.message) for w in caught)
    feats = {k: np.asarray(store.data[store.index[k]], dtype=np.float32) for k in usable}
    ref = feats["float"]
    loud = ref > -40
    assert np.abs(feats["pcm24"] - ref)[loud].max() < 0.01
    assert np.abs(feats["pcm8"] - ref)[loud].mean() < 0.5  # 8-bit adds quantisation noise only
    assert np.abs(feats["six"] - (ref - 20 * np.log10(2)))[loud].mean() < 0.2  # 6-channel downmix of 0.5·x
    assert (feats["short"][110:] == -100).all() and np.abs(feats["short"][:90] - ref[:90]).max() < 0.05
    assert np.abs(feats["long"] - clip_features(files["long"])).max() < 0.02  # first 10 s only
    assert all(f.shape == (1001, 64) for f in feats.values())


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        decode(tmp_path / "missing.wav")
    (tmp_path / "t.wav").write_text("hello")
    with pytest.raises(AudioError, match="t.wav: could not be decoded"):
        decode(tmp_path / "t.wav")
    sf.write(tmp_path / "tiny.wav", np.zeros(1600, np.float32), SR)
    with pytest.raises(AudioError, match="too short"):
        load_wave(tmp_path / "tiny.wav", FrontendConfig(), min_samples=4960)


def test_featurize_resumes_after_an_interruption(tmp_path):
    files = make_files(tmp_path)
    keys = ["float", "long", "pcm24", "pcm8", "short", "six"]
    paths = [files[k] for k in keys]
    first = featurize(keys, paths, tmp_path / "a", workers=1, progress=False, limit=2)  # "killed" after 2 clips
    assert first.done == 2
    second = featurize(keys, paths, tmp_path / "a", workers=2, progress=False)
    assert second.skipped == 2 and second.done == 4
    straight = featurize(keys, paths, tmp_path / "b", workers=1, progress=False)
    assert straight.done == 6
    a, b = FeatureStore.open(tmp_path / "a"), FeatureStore.open(tmp_path / "b")
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    assert a.done.all()


def test_features_of_another_frontend_are_refused(tmp_path):
    files = make_files(tmp_path)
    summary = featurize(["float"], [files["float"]], tmp_path / "w", workers=1, progress=False)
    with pytest.raises(HmicError, match="re-run 'hmic featurize'"):
        FeatureStore(summary.folder, FrontendConfig(n_mels=128))
    with pytest.raises(HmicError, match="no features for front-end"):
        FeatureStore.open(tmp_path / "w", FrontendConfig(clip_seconds=5.0))


@pytest.mark.parametrize("rate", [44_100, 48_000, 22_050, 11_025, 8_000, 96_000])
def test_the_numpy_resampler_equals_torchaudio(rate):
    """hmic.audio.decoding resamples without torch (the ONNX path imports none); it is torchaudio's Kaiser sinc."""
    import torch
    import torchaudio

    from hmic.audio.decoding import resample

    cfg = FrontendConfig()
    method, width, rolloff, beta = cfg.resampler.split("/")
    x = np.random.default_rng(rate).standard_normal(rate * 3 + 7).astype(np.float32) * 0.3
    want = torchaudio.transforms.Resample(rate, cfg.sample_rate, resampling_method=method, lowpass_filter_width=int(width),
                                          rolloff=float(rolloff), beta=float(beta))(torch.from_numpy(x)[None])[0].numpy()
    got = resample(x, rate, cfg.sample_rate, cfg.resampler)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5


def test_a_rate_without_a_small_ratio_is_refused_not_exhausting_memory(tmp_path):
    sf.write(tmp_path / "odd.wav", np.zeros(16_001, dtype=np.float32), 16_001)
    with pytest.raises(AudioError, match=r"odd\.wav: a sample rate of 16001 Hz has no small ratio"):
        load_wave(tmp_path / "odd.wav")


def test_a_failure_that_is_not_the_clips_stops_featurize_and_resumes_after_the_fix(tmp_path, monkeypatch):
    """Only a clip's own audio makes it a failure; anything else (here: a library error on the 3rd clip,
    then a full disk while recording a bad clip) stops the job, keeps what was written, and a second run
    after the fix resumes to the store an uninterrupted run gives."""
    import errno

    import hmic.data.features as features

    files = make_files(tmp_path)
    keys = ["corrupt", "float", "long", "pcm24", "pcm8", "short", "six"]
    paths = [files[k] for k in keys]
    real = features.clip_features
    calls = []

    def flaky(path, cfg):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("libsomething.so: cannot open shared object file")
        return real(path, cfg)

    monkeypatch.setattr(features, "clip_features", flaky)
    with pytest.raises(HmicError, match="featurize stopped: RuntimeError: libsomething.so.*run 'hmic featurize' again") as e:
        featurize(keys, paths, tmp_path / "a", workers=1, progress=False)
    assert "\n" not in str(e.value) and "(while computing" in str(e.value)
    store = FeatureStore.open(tmp_path / "a")
    assert set(store.failures) == {"corrupt"}  # the clip in flight was not blamed
    assert [k for k in keys if store.done[store.index[k]]] == ["float"]

    monkeypatch.setattr(features, "clip_features", real)
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a" / "failures.csv"))

    import hmic.data.store as store_module

    monkeypatch.setattr(store_module, "write_csv", full)
    for p in (tmp_path / "a" / "features").glob("*/failures.csv"):
        p.unlink()  # the bad clip is recorded again, and the disk is full now
    with pytest.raises(HmicError, match="No space left on device.*resume"):
        featurize(keys, paths, tmp_path / "a", workers=1, progress=False)
    monkeypatch.undo()
    resumed = featurize(keys, paths, tmp_path / "a", workers=2, progress=False)
    assert (resumed.done, resumed.failed) == (len(keys) - 2, 1)
    straight = featurize(keys, paths, tmp_path / "b", workers=1, progress=False)
    a, b = FeatureStore.open(tmp_path / "a"), FeatureStore.open(tmp_path / "b")
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    assert (a.done == b.done).all() and a.failures.keys() == b.failures.keys() == {"corrupt"}


def test_a_feature_store_folder_that_cannot_be_written_is_one_error(tmp_path, monkeypatch):
    files = make_files(tmp_path)
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if "features" in self.parts:
            raise OSError(30, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(HmicError, match="cannot create the feature store .*Read-only file system.*--work-dir"):
        featurize(["float"], [files["float"]], tmp_path / "w", workers=1, progress=False)


def test_a_corrupt_mp3_says_it_could_not_be_decoded_and_the_decoders_lines_stay_off_the_terminal(tmp_path, capfd):
    """Issue 37: libsndfile said "File does not exist or is not a regular file (possibly a pipe?)" for a file
    that exists, after mpg123's own lines on stderr."""
    x = np.random.default_rng(0).standard_normal(SR * 3).astype(np.float32) * 0.1
    sf.write(tmp_path / "ok.mp3", x, SR, format="MP3")
    good = (tmp_path / "ok.mp3").read_bytes()
    noise = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "bad.mp3").write_bytes(good[:400] + noise + good[6000:])
    capfd.readouterr()
    with pytest.raises(AudioError) as e:
        decode(tmp_path / "bad.mp3")
    assert "bad.mp3: could not be decoded: the MP3 file exists but is corrupt" in str(e.value)
    assert "does not exist or is not a regular file" not in str(e.value)
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_skipped_folder_entries_are_named(tmp_path):
    from hmic.tagging.inputs import expand_inputs

    for name in ("a.wav", "cover.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = expand_inputs([tmp_path])
    assert found.not_audio == 2 and found.skipped == [str(tmp_path / "cover.jpg"), str(tmp_path / "notes.txt")]
