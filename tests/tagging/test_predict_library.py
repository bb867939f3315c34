"""`hmic predict` at library scale: shared batches across files, worker decoding, resumable JSON Lines,
unreadable folder entries, label tracks, precision, fast checkpoint loading and the ONNX backend."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import hmic.devices
import hmic.tagging.inputs
from hmic.models.checkpoint import read_state
from hmic.models.loading import Checkpoint
from hmic.cli import app
from hmic.devices import resolve_precision
from hmic.errors import HmicError
from hmic.tagging import FileTagger, expand_inputs, label_track
from hmic.tagging.results import window_marks

ROOT = Path(__file__).resolve().parents[2]


def noise_file(path: Path, seconds: float, seed: int, sr: int = 22_050) -> Path:
    x = np.random.default_rng(seed).standard_normal(int(sr * seconds)).astype(np.float32) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)
    return path


@pytest.fixture
def library(tmp_path) -> Path:
    """Three files of 1, 3 and 4 windows (at hop 5 s), one in a sub-folder."""
    folder = tmp_path / "library"
    noise_file(folder / "a.wav", 4.0, 0)
    noise_file(folder / "b.flac", 18.0, 1)
    noise_file(folder / "sub" / "c.wav", 23.0, 2)
    return folder


def gmp_run(trained) -> str:
    return str(Path(trained["summaries"]["gmp"]["run"]))


class Recording:
    """A runner wrapper that records the batch sizes it was given."""

    def __init__(self, runner):
        self.runner, self.sizes = runner, []
        self.inputs, self.backend, self.precision = runner.inputs, runner.backend, runner.precision

    def __call__(self, x):
        self.sizes.append(len(x))
        return self.runner(x)


def test_windows_of_several_files_share_batches_and_match_one_file_at_a_time(trained, library):
    tagger = FileTagger.load(gmp_run(trained))
    files = expand_inputs([library]).files
    alone = {str(f): tagger.tag(f, batch_size=1) for f in files}
    tagger.runner = Recording(tagger.runner)
    streamed = list(tagger.stream(files, batch_size=8, workers=1))
    assert [p for p, _, _ in streamed] == [str(f) for f in files]  # input order
    assert tagger.runner.sizes == [8]  # 1 + 3 + 4 windows in one forward pass
    for path, result, error in streamed:
        assert error is None
        for a, b in zip(result["segments"], alone[path]["segments"]):
            assert a["start"] == b["start"]
            for level in ("fine", "coarse"):
                assert np.allclose(list(a[level].values()), list(b[level].values()), atol=2e-4)


def test_jsonl_resumes_after_a_kill_and_tags_each_file_once(trained, library, tmp_path):
    out = tmp_path / "tags.jsonl"
    args = ["predict", str(library), "--run", gmp_run(trained), "--jsonl", str(out), "--workers", "1"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all("segments" not in json.loads(l) for l in lines)
    # a run killed while writing its second line: one whole line and half of the next
    out.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "1 file(s) already tagged there are skipped" in second.output
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert sorted(Path(r["file"]).name for r in rows) == ["a.wav", "b.flac", "c.wav"]
    third = CliRunner().invoke(app, args)
    assert third.exit_code == 0 and "3 file(s) already tagged" in third.output
    assert len(out.read_text().splitlines()) == 3


def test_unreadable_folder_entries_are_reported_not_skipped(trained, library, tmp_path, monkeypatch):
    os.symlink(tmp_path / "gone.wav", library / "dangling.wav")
    locked = noise_file(library / "locked.wav", 3.0, 5)
    real_access = os.access
    # tests may run as root, who reads any file: deny the permission the way the OS would
    monkeypatch.setattr(hmic.tagging.inputs.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    found = expand_inputs([library])
    errors = {Path(e["file"]).name: e["error"] for e in found.unreadable}
    assert "dangling symbolic link" in errors["dangling.wav"] and "permission denied" in errors["locked.wav"]
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app, ["predict", str(library), "--run", gmp_run(trained), "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert sorted(Path(f["file"]).name for f in data["failures"]) == ["dangling.wav", "locked.wav"]
    assert len(data["results"]) == 3 and "3 file(s) tagged, 2 failed" in result.output


def test_label_track_merges_overlapping_windows():
    seg = lambda s, e, v, c: {"start": s, "end": e, "fine": {"violin": v}, "coarse": {"strings": c}}  # noqa: E731
    result = {"window_thresholds": {"fine": {"violin": 0.5}, "coarse": {"strings": 0.3}},
              "segments": [seg(0, 10, 0.9, 0.9), seg(5, 15, 0.6, 0.1), seg(10, 20, 0.2, 0.1),
                           seg(15, 25, 0.7, 0.8), seg(20, 27, 0.1, 0.9)]}
    # violin: 0-10, 5-15 overlap and 15-25 touches them; strings: 0-10, then a gap, then 15-25 and 20-27
    assert label_track(result) == ("0.000\t10.000\tcoarse:strings\n0.000\t25.000\tfine:violin\n"
                                   "15.000\t27.000\tcoarse:strings\n")


def test_labels_dir_mirrors_the_library(trained, library, tmp_path):
    labels = tmp_path / "labels"
    result = CliRunner().invoke(app, ["predict", str(library), "--run", gmp_run(trained), "--labels", str(labels),
                                      "--segments", "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(labels)) for p in labels.rglob("*.txt"))
    assert written == ["a.wav.txt", "b.flac.txt", "sub/c.wav.txt"]
    data = {Path(r["file"]).name: r for r in json.loads((tmp_path / "p.json").read_text())["results"]}
    marks = window_marks(data["c.wav"])  # each window's present tags, by the result's decision rule
    for line in (labels / "sub" / "c.wav.txt").read_text().splitlines():
        start, end, label = line.split("\t")
        level, tag = label.split(":")
        assert 0 <= float(start) < float(end) <= data["c.wav"]["duration_seconds"] + 1e-3
        assert data["c.wav"]["window_thresholds"][level][tag] is not None  # never a "not trained" tag
        assert any(tag in (fine if level == "fine" else coarse) for s, fine, coarse in marks
                   if s["start"] >= float(start) and s["end"] <= float(end))


def test_bf16_is_refused_on_a_cpu_that_only_emulates_it(monkeypatch):
    monkeypatch.setattr(hmic.devices, "cpu_native_bf16", lambda: False)
    with pytest.raises(HmicError, match="no native bf16"):
        resolve_precision(torch.device("cpu"), "bf16")
    assert resolve_precision(torch.device("cpu"), "auto") == "fp32"
    monkeypatch.setattr(hmic.devices, "cpu_native_bf16", lambda: True)
    assert resolve_precision(torch.device("cpu"), "bf16") == "bf16"


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_has_one_meaning_for_training_embedding_and_tagging(monkeypatch, native):
    """auto is bf16 exactly where the device computes bf16 natively: training's autocast, hmic embed's store
    precision and hmic predict's tagger all resolve it through hmic.devices.resolve_precision."""
    from hmic.devices import autocast

    monkeypatch.setattr(hmic.devices, "cpu_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "auto") == ("bf16" if native else "fp32")
    with autocast(cpu, "auto"):
        assert torch.is_autocast_enabled("cpu") is native
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    import hmic.training.embed as embed_module
    import hmic.tagging.tagger as tagger_module

    for module in (embed_module, tagger_module):  # no second resolver beside the one in hmic.devices
        assert not any(name.startswith("resolve_") and "precision" in name and getattr(module, name) is not resolve_precision
                       for name in dir(module))


def test_bf16_decisions_agree_with_fp32(trained, library, monkeypatch):
    monkeypatch.setattr(hmic.devices, "cpu_native_bf16", lambda: True)  # emulated here, fine for a tiny model
    files = expand_inputs([library]).files
    run = str(Path(trained["summaries"]["resatt"]["run"]))
    fp32 = [r for _, r, _ in FileTagger.load(run, "cpu", "fp32").stream(files)]
    bf16 = [r for _, r, _ in FileTagger.load(run, "cpu", "bf16").stream(files)]
    assert bf16[0]["precision"] == "bf16" and fp32[0]["precision"] == "fp32"
    same = total = 0
    for a, b in zip(fp32, bf16):
        for sa, sb in zip(a["segments"], b["segments"]):
            for level, thr in a["window_thresholds"].items():
                for tag, t in thr.items():
                    if t is None:  # "not trained": no threshold to compare against
                        continue
                    same += (sa[level][tag] >= t) == (sb[level][tag] >= t)
                    total += 1
    trained_tags = sum(t is not None for thr in fp32[0]["window_thresholds"].values() for t in thr.values())
    assert total == 8 * trained_tags > 0 and same / total >= 0.9
    diff = max(abs(sa[level][tag] - sb[level][tag]) for a, b in zip(fp32, bf16) for sa, sb in zip(a["segments"], b["segments"])
               for level in ("fine", "coarse") for tag in sa[level])
    assert diff > 1e-4  # bf16 really ran: a silent float32 fallback would give equal probabilities


def test_checkpoint_loads_memory_mapped_without_meta_tensors(trained):
    path = Path(trained["summaries"]["resatt"]["run"]) / "best.pt"
    model = Checkpoint.load(path).model
    state = read_state(path)["model"]
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def test_the_predict_path_does_not_import_scikit_learn_or_torch():
    code = ("import sys, hmic.cli, hmic.tagging, hmic.tagging.onnxrun; "
            "print(sorted(m for m in ('sklearn', 'skmultilearn', 'scipy', 'torch', 'torchaudio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_onnx_export_parity_and_predict_backend(trained, library, tmp_path):
    pytest.importorskip("onnxruntime")
    run = Path(trained["summaries"]["resatt"]["run"])
    model = tmp_path / "resatt.onnx"
    result = CliRunner().invoke(app, ["export", str(run), "--onnx", str(model)])
    assert result.exit_code == 0, result.output
    assert "outputs fine_probs, coarse_probs, attention" in " ".join(result.output.split())
    assert float(re.search(r"max \|Δp\| = (\S+)", result.output).group(1)) < 1e-4  # onnxruntime vs PyTorch
    from hmic.tagging.onnxrun import load_onnx_tagger
    files = expand_inputs([library]).files
    onnx_results = [r for _, r, _ in load_onnx_tagger(model).stream(files)]
    torch_results = [r for _, r, _ in FileTagger.load(run).stream(files)]
    for a, b in zip(onnx_results, torch_results):
        assert a["backend"] == "onnx" and b["backend"] == "torch"
        for sa, sb in zip(a["segments"], b["segments"]):
            for level in ("fine", "coarse"):
                assert np.allclose(list(sa[level].values()), list(sb[level].values()), atol=1e-3)
        assert [c["present"] for c in a["coarse"]] == [c["present"] for c in b["coarse"]]
        for ca, cb in zip(a["coarse"], b["coarse"]):  # the same explanations (hmic.models.explain, from the file's metadata)
            if "explanation" in cb:
                assert ca["explanation"]["basis"] == cb["explanation"]["basis"]
                assert [f["tag"] for f in ca["explanation"]["carried_by"]] == [f["tag"] for f in cb["explanation"]["carried_by"]]
    cli = CliRunner().invoke(app, ["predict", str(files[1]), "--run", str(model), "--backend", "onnx",
                                   "--json", str(tmp_path / "o.json")])
    assert cli.exit_code == 0, cli.output
    assert json.loads((tmp_path / "o.json").read_text())["results"][0]["backend"] == "onnx"
    # the whole command over onnxruntime never imports torch (its start-up: docs/measurements.md, "Tagging speed")
    code = ("import sys; from hmic.cli import main; sys.argv = ['hmic', 'predict', sys.argv[1], '--run', sys.argv[2], "
            "'--backend', 'onnx', '--explain', '--json', sys.argv[3]]\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint('torch' in sys.modules, 'torchaudio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(files[1]), str(model), str(tmp_path / "fresh.json")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]
    assert json.loads((tmp_path / "fresh.json").read_text())["results"][0]["coarse"] == \
        json.loads((tmp_path / "o.json").read_text())["results"][0]["coarse"]
    refused = CliRunner().invoke(app, ["predict", str(files[1]), "--run", str(model), "--backend", "onnx",
                                       "--precision", "bf16"])
    assert isinstance(refused.exception, HmicError) and "not available with --backend onnx" in str(refused.exception)
    not_ours = CliRunner().invoke(app, ["predict", str(files[1]), "--run", str(run / "best.pt"), "--backend", "onnx"])
    assert isinstance(not_ours.exception, HmicError) and "not a loadable ONNX model" in str(not_ours.exception)
    weights = model.with_name(model.name + ".data")  # the graph's weights travel beside it
    assert weights.is_file() and weights.stat().st_size > model.stat().st_size
    weights.rename(tmp_path / "elsewhere.data")
    alone = CliRunner().invoke(app, ["predict", str(files[1]), "--run", str(model), "--backend", "onnx"])
    assert isinstance(alone.exception, HmicError) and "resatt.onnx.data must lie beside it" in str(alone.exception)


def test_graph_logmel_equals_the_front_end():
    from hmic.audio.decoding import FrontendConfig
    from hmic.audio.logmel import LogMel
    from hmic.tagging.export import probe_waves
    from hmic.audio.logmel import GraphLogMel

    cfg = FrontendConfig()
    x = probe_waves(cfg, n=3)
    a, b = LogMel(cfg)(x), GraphLogMel(cfg)(x)
    assert a.shape == b.shape == (3, 1001, 64)
    loud = a > -60  # where the dB values are not dominated by float32 rounding of tiny powers
    assert (a - b)[loud].abs().max() < 1e-3


def test_decoding_workers_run_one_blas_thread():
    """The resampler's matrix products in a worker must not take the cores the model runs on."""
    code = ("import threadpoolctl; from hmic.audio.decoding import FrontendConfig; from hmic.tagging.workers import PrepareJob, _init_worker; "
            "_init_worker(PrepareJob(FrontendConfig(), 0, 5.0, 'wave')); "
            "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    assert out.stdout.strip() == "[1]"


def test_jsonl_is_resumed_only_by_the_same_model_and_options(trained, library, tmp_path):
    out = tmp_path / "tags.jsonl"
    base = ["predict", str(library), "--jsonl", str(out), "--workers", "0"]
    first = CliRunner().invoke(app, base + ["--run", gmp_run(trained)])
    assert first.exit_code == 0, first.output
    lines = out.read_text().splitlines()
    assert all(json.loads(l)["producer"]["hop_seconds"] == 5.0 for l in lines)
    assert all(Path(json.loads(l)["path"]).is_absolute() for l in lines)
    for extra, needle in ((["--run", str(Path(trained["summaries"]["resatt"]["run"]))], "checkpoint"),
                          (["--run", gmp_run(trained), "--hop", "2.5"], "hop_seconds 5.0 there, 2.5 now"),
                          (["--run", gmp_run(trained), "--aggregate", "mean"], "aggregate 'max' there, 'mean' now")):
        other = CliRunner().invoke(app, base + extra)
        assert isinstance(other.exception, HmicError) and needle in str(other.exception), other.output
        assert "another --jsonl file" in str(other.exception)
    assert out.read_text().splitlines() == lines  # nothing added, nothing silently skipped


def test_jsonl_resume_from_another_working_folder_tags_each_file_once(trained, library, tmp_path, monkeypatch):
    out = tmp_path / "tags.jsonl"
    monkeypatch.chdir(library)
    args = ["predict", "a.wav", "b.flac", "--run", gmp_run(trained), "--jsonl", str(out), "--workers", "0"]
    assert CliRunner().invoke(app, args).exit_code == 0
    monkeypatch.chdir(library / "sub")
    again = CliRunner().invoke(app, ["predict", "../a.wav", "../b.flac", "c.wav", "--run", gmp_run(trained),
                                     "--jsonl", str(out), "--workers", "0"])
    assert again.exit_code == 0, again.output
    assert "2 file(s) already tagged there are skipped" in again.output
    paths = [json.loads(l)["path"] for l in out.read_text().splitlines()]
    assert sorted(Path(p).name for p in paths) == ["a.wav", "b.flac", "c.wav"] and len(set(paths)) == 3


def test_a_damaged_jsonl_line_in_the_middle_stops_the_resume_naming_it(trained, library, tmp_path):
    out = tmp_path / "tags.jsonl"
    args = ["predict", str(library), "--run", gmp_run(trained), "--jsonl", str(out), "--workers", "0"]
    assert CliRunner().invoke(app, args).exit_code == 0
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:40] + "\n" + lines[2] + "\n")
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, HmicError) and "line 2: not a JSON line" in str(again.exception)
    assert len(out.read_text().splitlines()) == 3


def test_labels_of_two_inputs_with_the_same_name_are_refused_not_overwritten(trained, tmp_path):
    a, b = noise_file(tmp_path / "A" / "01.wav", 3.0, 1), noise_file(tmp_path / "B" / "01.wav", 3.0, 2)
    labels = tmp_path / "labels"
    result = CliRunner().invoke(app, ["predict", str(a.parent), str(b.parent), "--run", gmp_run(trained),
                                      "--labels", str(labels)])
    assert isinstance(result.exception, HmicError)
    assert str(a) in str(result.exception) and str(b) in str(result.exception)
    assert not labels.exists()  # refused before anything was tagged or written


def test_an_onnx_graph_beside_another_exports_weights_is_refused(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from hmic.tagging.export import export_onnx
    from hmic.tagging.onnxrun import OnnxRunner

    gmp, resatt = tmp_path / "gmp.onnx", tmp_path / "resatt.onnx"
    export_onnx(Path(trained["summaries"]["gmp"]["run"]), gmp)
    export_onnx(Path(trained["summaries"]["resatt"]["run"]), resatt)
    os.replace(tmp_path / "resatt.onnx.data", tmp_path / "gmp.onnx.data")  # as a crash between the two moves would
    with pytest.raises(HmicError, match="gmp.onnx.data is not the weights file .*gmp.onnx was exported with"):
        OnnxRunner.open(gmp)
