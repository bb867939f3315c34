"""`hmic predict` at library scale against a plain PyTorch CNN14, side by side in one run.

    python benchmarks/predict.py [--seconds 180] [--folder-files 50] [--folder-seconds 60] [--trained RUN]

Rows (all on the same song, full-size CNN14 with random weights unless said, batch 8, this process):
  reference    a plain float32 eager CNN14 written below (PANNs' Cnn14 forward: STFT → log-mel → CNN,
               NCHW, no channels_last), fed by the same decoding and resampling;
  hmic fp32    Tagger.tag (decode → resample → windows → log-mel → model: BatchNorm folded, channels_last);
  hmic bf16    the same with the backbone in bf16 autocast (only where the device runs bf16 natively);
  onnxruntime  the exported graph (`hmic export --onnx`) through `--backend onnx`, on as many threads;
  command      the wall time of `hmic predict SONG` in a fresh interpreter, for each backend; overhead =
               command − the same backend in this process (hmic fp32, onnxruntime), next to the time of a
               bare `python -c "import torch"` measured in the same run (the onnx backend imports no torch);
  folder       `Tagger.stream` over N files with worker decoding, in files/s, against the model-only
               bound (the same windows' log-mel already in memory, model time only).
Goals (2 CPU cores): fp32 ≤ 0.8× reference; bf16 ≤ 0.45× with ≥ 99% of (window, tag) decisions equal to
fp32 on a trained model (`--trained`, else the newest tuned run under data/demo); command overhead ≤ 1.5 s;
folder ≥ 90% of the model-only bound.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent

from common import device_name  # noqa: E402

from hmic.audio.decoding import load_wave  # noqa: E402
from hmic import FrontendConfig  # noqa: E402
from hmic.audio.logmel import slaney_filterbank  # noqa: E402
from hmic import BackboneConfig  # noqa: E402
from hmic.models.checkpoint import save_checkpoint  # noqa: E402
from hmic.data.openmic import OPENMIC_TAGS  # noqa: E402
from hmic.devices import cpu_native_bf16, resolve_device  # noqa: E402
from hmic import load_hierarchy  # noqa: E402
from hmic.models.model import HierarchicalModel  # noqa: E402
from hmic.audio.decoding import window_starts  # noqa: E402
from hmic import FileTagger as Tagger  # noqa: E402
from hmic.data.synth.song import render_song  # noqa: E402
from hmic import TrainConfig  # noqa: E402


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(c_out), nn.BatchNorm2d(c_out)

    def forward(self, x, pool):
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool)


class ReferenceCnn14(nn.Module):
    """PANNs' Cnn14 (inference path) with its log-mel front-end: the reference of the benchmark."""

    def __init__(self, cfg: FrontendConfig, n_out: int = 20):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft))
        self.register_buffer("melW", slaney_filterbank(cfg))
        self.bn0 = nn.BatchNorm2d(cfg.n_mels)
        ch = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(ch[i], ch[i + 1]))
        self.fc1 = nn.Linear(2048, 2048)
        self.fc_out = nn.Linear(2048, n_out)

    def forward(self, wave):
        spec = torch.stft(wave, self.cfg.n_fft, self.cfg.hop_length, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True).abs() ** 2  # (B, K, T)
        x = 10 * torch.log10(torch.clamp(spec.transpose(1, 2) @ self.melW, min=1e-10))[:, None]  # (B, 1, T, M)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, (2, 2) if i < 5 else (1, 1))
        x = x.mean(dim=3)
        x = x.max(dim=2).values + x.mean(dim=2)
        return torch.sigmoid(self.fc_out(F.relu_(self.fc1(x))))


def reference_tag(model: ReferenceCnn14, path: Path, cfg: FrontendConfig, batch: int, device) -> np.ndarray:
    wave = torch.from_numpy(load_wave(path, cfg))
    starts = window_starts(wave.shape[0], cfg.clip_samples, cfg.clip_samples // 2)
    windows = torch.stack([wave[s:s + cfg.clip_samples] for s in starts])
    with torch.no_grad():
        out = [model(windows[i:i + batch].to(device)).cpu() for i in range(0, len(windows), batch)]
    return torch.cat(out).numpy()


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])})
    return time.perf_counter() - t0


def probabilities(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(windows, tags) probabilities of a result's timeline and the matching window thresholds (tags:
    fine, then coarse)."""
    thr = result["window_thresholds"]
    p = np.array([[s[lv][t] for lv in thr for t in thr[lv]] for s in result["segments"]])
    return p, np.array([thr[lv][t] for lv in thr for t in thr[lv]])


def decisions(result: dict) -> np.ndarray:
    p, thresholds = probabilities(result)
    return p >= thresholds


def newest_tuned_run() -> Path | None:
    runs = sorted((ROOT / "data" / "demo").glob("*runs/*/lam*/seed*/thresholds.json"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--folder-files", type=int, default=50)
    ap.add_argument("--folder-seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=1, help="decoding processes for the folder row")
    ap.add_argument("--trained", type=Path, default=None, help="a tuned run for the bf16 agreement")
    args = ap.parse_args()
    device = resolve_device(args.device)
    bf16_native = device.type == "cuda" or cpu_native_bf16()
    tmp = Path(tempfile.mkdtemp(prefix="hmic-bench-"))
    atexit.register(shutil.rmtree, tmp, True)  # the models, the exported graph and the folder: ~1 GB
    song = tmp / "song.wav"
    render_song(song, args.seconds, seed=0)
    cfg = FrontendConfig()
    h = load_hierarchy(None, list(OPENMIC_TAGS))
    torch.manual_seed(0)
    model = HierarchicalModel(BackboneConfig("cnn14"), "resatt", h).eval()
    thresholds = {"fine": {n: 0.5 for n in h.fine_names}, "coarse": {n: 0.5 for n in h.coarse_names}}
    ckpt = tmp / "best.pt"
    save_checkpoint(ckpt, model, cfg, asdict(TrainConfig(method="resatt", arch="cnn14", pretrained="none")),
                    epoch=0, best={}, thresholds=thresholds)
    reference = ReferenceCnn14(cfg).eval()
    reference.load_state_dict(model.backbone.state_dict(), strict=False)
    reference.to(device)
    rows = {}
    rows["reference"] = best_of(lambda: reference_tag(reference, song, cfg, args.batch, device), args.repeats)
    fp32 = Tagger.load(ckpt, args.device, "fp32")
    result = fp32.tag(song, batch_size=args.batch)
    windows = len(result["segments"])
    rows["hmic fp32"] = best_of(lambda: fp32.tag(song, batch_size=args.batch), args.repeats)
    if bf16_native:
        bf16 = Tagger.load(ckpt, args.device, "bf16")
        bf16.tag(song, batch_size=args.batch)
        rows["hmic bf16"] = best_of(lambda: bf16.tag(song, batch_size=args.batch), args.repeats)
    onnx_command = None
    try:
        from hmic.tagging.export import export_onnx
        from hmic.tagging.onnxrun import load_onnx_tagger

        export_onnx(ckpt, tmp / "model.onnx")
        ort = load_onnx_tagger(tmp / "model.onnx", args.device, threads=torch.get_num_threads())
        ort.tag(song, batch_size=args.batch)
        rows["onnxruntime"] = best_of(lambda: ort.tag(song, batch_size=args.batch), args.repeats)
        ort = None  # free its memory before the commands run
        onnx_command = min(wall([sys.executable, "-m", "hmic", "predict", str(song), "--run", str(tmp / "model.onnx"),
                                 "--backend", "onnx", "--device", args.device]) for _ in range(2))
    except Exception as e:  # no onnx extra installed
        print(f"onnxruntime rows skipped: {e}")
    import_torch = min(wall([sys.executable, "-c", "import torch"]) for _ in range(2))
    command = min(wall([sys.executable, "-m", "hmic", "predict", str(song), "--run", str(ckpt), "--device", args.device,
                        "--precision", "fp32"]) for _ in range(2))

    # the folder: worker decoding + shared batches against the model alone on the same windows
    folder = tmp / "library"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = load_wave(song, cfg)
    import soundfile as sf

    n_samples = int(args.folder_seconds * 44_100)
    for i in range(args.folder_files):  # 44.1-kHz stereo excerpts: decoding and resampling are real work
        start = int(rng.integers(0, max(1, len(data) - int(args.folder_seconds * 16_000))))
        piece = np.interp(np.arange(n_samples) * 16_000 / 44_100, np.arange(len(data)), data)[None].repeat(2, 0)
        sf.write(folder / f"{i:03d}.wav", np.roll(piece, -start, axis=1).T.astype(np.float32), 44_100)
    files = sorted(folder.glob("*.wav"))
    t0 = time.perf_counter()
    done = sum(r is not None for _, r, _ in fp32.stream(files, batch_size=args.batch, workers=args.workers))
    folder_seconds = time.perf_counter() - t0
    assert done == len(files)
    from hmic.tagging.workers import PrepareJob as Job, prepare

    job = Job(cfg, 0, 5.0, "logmel")
    inputs = np.concatenate([prepare(0, f, job).inputs for f in files[:4]])
    per_window = best_of(lambda: [fp32.runner(inputs[i:i + args.batch]) for i in range(0, len(inputs), args.batch)], 1) / len(inputs)
    folder_windows = len(files) * len(window_starts(int(args.folder_seconds * 16_000), cfg.clip_samples, 80_000))
    bound = folder_windows * per_window

    agreement = None
    trained = args.trained or newest_tuned_run()
    if trained is not None:
        if bf16_native:
            a = decisions(Tagger.load(trained, args.device, "fp32").tag(song))
            b = decisions(Tagger.load(trained, args.device, "bf16").tag(song))
            agreement = (a == b).mean()
        else:
            print(f"bf16 agreement not measured: {device_name(device)} has no native bf16")

    print(f"device: {device_name(device)}; torch {torch.__version__}; CNN14 (random weights), batch {args.batch}; "
          f"bf16 native: {bf16_native}")
    print(f"song: {args.seconds:.0f} s, {windows} windows (10 s, hop 5 s)")
    print(f"{'row':<34}{'seconds':>10}{'x reference':>14}")
    for name, sec in rows.items():
        print(f"{name:<34}{sec:>10.2f}{sec / rows['reference']:>14.2f}")
    print(f"{'command hmic predict (wall)':<34}{command:>10.2f}{command / rows['reference']:>14.2f}")
    print(f"{'command overhead (command - fp32)':<34}{command - rows['hmic fp32']:>10.2f}")
    print(f"{'  of which python -c import torch':<34}{import_torch:>10.2f}")
    if onnx_command is not None:
        print(f"{'command --backend onnx (wall)':<34}{onnx_command:>10.2f}{onnx_command / rows['reference']:>14.2f}")
        print(f"{'command overhead (command - onnx)':<34}{onnx_command - rows['onnxruntime']:>10.2f}")
    print(f"folder: {len(files)} files x {args.folder_seconds:.0f} s (44.1 kHz stereo WAV), {folder_windows} windows, "
          f"{args.workers} decoding worker(s)")
    print(f"{'  Tagger.stream (s) / files/s':<34}{folder_seconds:>10.2f}{len(files) / folder_seconds:>14.2f}")
    print(f"{'  model-only bound (s) / files/s':<34}{bound:>10.2f}{len(files) / bound:>14.2f}")
    print(f"  throughput: {100 * bound / folder_seconds:.1f}% of the model-only bound (goal >= 90%)")
    if agreement is not None:
        print(f"bf16 vs fp32 decisions on {trained}: {100 * agreement:.2f}% equal (goal >= 99%)")
    goals = [f"fp32/reference {rows['hmic fp32'] / rows['reference']:.2f} (<= 0.8)",
             f"overhead {command - rows['hmic fp32']:.2f} s (torch backend)"
             + (f", {onnx_command - rows['onnxruntime']:.2f} s (onnx backend) (<= 1.5)" if onnx_command is not None else " (<= 1.5)")]
    if "hmic bf16" in rows:
        goals.append(f"bf16/reference {rows['hmic bf16'] / rows['reference']:.2f} (<= 0.45)")
    print("goals: " + "; ".join(goals))


if __name__ == "__main__":
    main()
