"""``hmic export --onnx``: a run's model as one ONNX graph that takes 16-kHz waveforms, front-end inside
(its weights beside it as ONNX external data, ``FILE.data``; read by ``hmic.tagging.onnxrun``).

The graph: waveform windows (B, clip_samples) float32 → log-mel (the STFT written as a convolution
with a Hann-windowed DFT basis, the mel filterbank as a matrix product: only Conv, Mul, MatMul and Log,
which every ONNX runtime has) → backbone → head → ``fine_probs`` (B, F), ``coarse_probs`` (B, C) and,
for heads with attention, ``attention`` (B, S, C) (resatt: over ``Hierarchy.attention_sources``, the fine tags at depth 2). Everything else a tagger needs (hierarchy, tuned
thresholds, front-end parameters, how the head explains a decision) is JSON in the file's metadata
under the key ``hmic``; decoding, downmixing and resampling to 16 kHz stay outside the graph
(``hmic.audio.decoding.load_wave``, the documented pre-processing).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hmic.audio.decoding import FrontendConfig
from hmic.audio.logmel import GraphLogMel, LogMel
from hmic.models.model import HierarchicalModel
from hmic.tagging.onnxrun import FORMAT, FORMAT_VERSION, METADATA_KEY, OnnxRunner, need, weights_digest, weights_path
from hmic.runs.run import load_tuned_checkpoint

OPSET = 17


class WaveModel(nn.Module):
    """Waveform windows → probabilities: GraphLogMel + the run's model (float32, eval)."""

    def __init__(self, model: HierarchicalModel, frontend: FrontendConfig):
        super().__init__()
        self.frontend = GraphLogMel(frontend)
        self.model = model

    def forward(self, wave: torch.Tensor):
        out = self.model(self.frontend(wave))
        if out.attention is None:
            return out.fine_probs, out.coarse_probs
        return out.fine_probs, out.coarse_probs, out.attention


def probe_waves(frontend: FrontendConfig, n: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, clip_samples) test windows for the parity check: tones, chirps and noise at several levels."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frontend.clip_samples) / frontend.sample_rate
    waves = []
    for i in range(n):
        f0 = 110.0 * 2 ** (i * 7 / 12)
        tone = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 6))
        chirp = torch.sin(2 * torch.pi * (200 + 300 * t) * t)
        noise = torch.randn(frontend.clip_samples, generator=g)
        waves.append((0.3 * tone + 0.2 * chirp + 0.05 * noise) * 10 ** (-i / 2))
    return torch.stack(waves).float()


def export_onnx(source: str | Path, out: str | Path, opset: int = OPSET) -> dict:
    """Write ``out`` and its weights ``out.data`` from a run folder or checkpoint with tuned thresholds
    (each file appears whole or not at all), then check them:
    onnxruntime on probe windows against the PyTorch model on LogMel features. Returns a report with
    the maximum absolute probability difference."""
    onnx = need("onnx", "hmic export --onnx")
    ckpt, thresholds = load_tuned_checkpoint(source)
    model = ckpt.model.float().eval()
    frontend = ckpt.frontend
    wave_model = WaveModel(model, frontend).eval()
    probe = probe_waves(frontend)
    with torch.no_grad():
        names = ["fine_probs", "coarse_probs"] + (["attention"] if len(wave_model(probe[:1])) == 3 else [])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = weights_path(out)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        raw = Path(work) / "raw.onnx"
        torch.onnx.export(wave_model, (probe[:2],), str(raw), dynamo=False, opset_version=opset,
                          input_names=["wave"], output_names=names,
                          dynamic_axes={"wave": {0: "batch"}, **{n: {0: "batch"} for n in names}})
        graph = onnx.load(str(raw))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": model.method,
                "hierarchy": model.hierarchy.to_dict(), "frontend": frontend.to_dict(), "thresholds": thresholds,
                "min_samples": model.backbone.min_samples(frontend), "embedding_dim": model.backbone.embedding_dim,
                "explainer": model.head.explainer().to_dict(), "inputs": {"wave": ["batch", frontend.clip_samples]},
                "outputs": names, "checkpoint": str(ckpt.path), "backbone": ckpt.state["backbone"],
                # what the model is (predict's provenance header)
                "config": {k: ckpt.config.get(k) for k in ("arch", "protocol", "data_dir", "work_dir")}}
        # The weights go to <out>.data beside the graph (ONNX external data): onnxruntime maps that file
        # instead of parsing 300 MB of protobuf, so a session opens in about 0.1 s (docs/measurements.md, "Tagging
        # speed"). Both are written in a folder beside ``out``, then moved into place, weights first;
        # the graph's metadata records the weights' digest, so a graph beside another export's
        # weights (a crash between the two moves) is refused when opened.
        onnx.save_model(graph, str(Path(work) / out.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        graph = onnx.load(str(Path(work) / out.name), load_external_data=False)
        meta["weights"] = weights_digest(Path(work) / data.name)
        del graph.metadata_props[:]
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        onnx.save_model(graph, str(Path(work) / out.name))
        umask = os.umask(0)
        os.umask(umask)
        for name, final in ((data.name, data), (out.name, out)):
            os.chmod(Path(work) / name, 0o666 & ~umask)  # as any file the user writes, not private
            os.replace(Path(work) / name, final)
    runner = OnnxRunner.open(out, "cpu")
    got = runner(probe.numpy())
    with torch.no_grad():
        want = model(LogMel(frontend)(probe))
    diff = max(float(np.abs(got.fine_probs - want.fine_probs.numpy()).max()),
               float(np.abs(got.coarse_probs - want.coarse_probs.numpy()).max()))
    return {"onnx": str(out), "weights": str(data), "bytes": out.stat().st_size + data.stat().st_size, "method": model.method, "outputs": names,
            "probe_windows": len(probe), "max_abs_probability_difference": diff, "opset": opset}


