"""``hmic export --onnx``: a run's model as one ONNX graph that takes 16-kHz waveforms, front-end inside.

The graph: waveform windows (B, clip_samples) float32 → log-mel (the STFT written as a convolution
with a Hann-windowed DFT basis, the mel filterbank as a matrix product: only Conv, Mul, MatMul and Log,
which every ONNX runtime has) → backbone → head → ``fine_probs`` (B, F), ``coarse_probs`` (B, C) and,
for heads with attention, ``attention`` (B, F, C). Everything else a tagger needs (hierarchy, tuned
thresholds, front-end parameters, the head's weights for explanations) is JSON in the file's metadata
under the key ``hmic``; decoding, downmixing and resampling to 16 kHz stay outside the graph
(``hmic.audio.load_wave``, the documented pre-processing).
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audio import FrontendConfig, LogMel, slaney_filterbank
from .errors import HmicError
from .fileio import atomic_path
from .heads import Head, build_head
from .hierarchy import Hierarchy
from .inference import Outputs
from .model import HierarchicalTagger
from .predict import Tagger, load_checkpoint

FORMAT = "hmic-onnx"
FORMAT_VERSION = 1
METADATA_KEY = "hmic"
OPSET = 17


class GraphLogMel(nn.Module):
    """The front-end of ``hmic.audio.LogMel`` (PANNs' log-mel) in graph-friendly operations: reflect
    padding, the DFT as a strided convolution (as in PANNs' torchlibrosa), power, the float64-built
    Slaney filterbank, 10·log10. Equal to LogMel within float32 rounding (tested)."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.n_fft
        window = torch.hann_window(n, periodic=True, dtype=torch.float64)
        angle = 2 * torch.pi * torch.arange(n // 2 + 1, dtype=torch.float64)[:, None] * torch.arange(n, dtype=torch.float64)[None] / n
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2K, n)
        self.register_buffer("dft", basis[:, None, :].float())
        self.register_buffer("mel_fb", slaney_filterbank(cfg))  # (K, M)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        n, k = self.cfg.n_fft, self.cfg.n_fft // 2 + 1
        x = F.pad(wave[:, None, :], (n // 2, n // 2), mode="reflect")
        spec = F.conv1d(x, self.dft, stride=self.cfg.hop_length)  # (B, 2K, T)
        power = spec[:, :k] ** 2 + spec[:, k:] ** 2
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb)  # (B, T, M)
        return 10.0 * torch.log10(torch.clamp(mel, min=self.cfg.log_floor))


class WaveModel(nn.Module):
    """Waveform windows → probabilities: GraphLogMel + the run's model (float32, eval)."""

    def __init__(self, model: HierarchicalTagger, frontend: FrontendConfig):
        super().__init__()
        self.frontend = GraphLogMel(frontend)
        self.model = model

    def forward(self, wave: torch.Tensor):
        out = self.model(self.frontend(wave))
        if out.attention is None:
            return out.fine_probs, out.coarse_probs
        return out.fine_probs, out.coarse_probs, out.attention


def _head_state(head: Head) -> str:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().float().numpy() for k, v in head.state_dict().items()})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _load_head(meta: dict, source: str) -> Head:
    hierarchy = Hierarchy.from_dict(meta["hierarchy"], source=source)
    head = build_head(meta["method"], int(meta["embedding_dim"]), hierarchy)
    with np.load(io.BytesIO(base64.b64decode(meta["head_state"])), allow_pickle=False) as z:
        head.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    return head.eval()


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
    """Write ``out`` (atomically) from a run folder or checkpoint with tuned thresholds, then check it:
    onnxruntime on probe windows against the PyTorch model on LogMel features. Returns a report with
    the maximum absolute probability difference."""
    onnx = _need("onnx", "hmic export --onnx")
    ckpt, thresholds = load_checkpoint(source)
    model = ckpt.model.float().eval()
    frontend = ckpt.frontend
    wave_model = WaveModel(model, frontend).eval()
    probe = probe_waves(frontend)
    with torch.no_grad():
        names = ["fine_probs", "coarse_probs"] + (["attention"] if len(wave_model(probe[:1])) == 3 else [])
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(wave_model, (probe[:2],), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["wave"], output_names=names,
                          dynamic_axes={"wave": {0: "batch"}, **{n: {0: "batch"} for n in names}})
        graph = onnx.load(str(tmp))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": model.method,
                "hierarchy": model.hierarchy.to_dict(), "frontend": frontend.to_dict(), "thresholds": thresholds,
                "min_samples": model.backbone.min_samples(frontend), "embedding_dim": model.backbone.embedding_dim,
                "head_state": _head_state(model.head), "inputs": {"wave": ["batch", frontend.clip_samples]},
                "outputs": names, "checkpoint": str(ckpt.path), "backbone": ckpt.state["backbone"]}
        del graph.metadata_props[:]
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        onnx.save(graph, str(tmp))
    runner = OnnxRunner.open(out, "cpu")
    got = runner(probe.numpy())
    with torch.no_grad():
        want = model(LogMel(frontend)(probe))
    diff = max(float(np.abs(got.fine_probs - want.fine_probs.numpy()).max()),
               float(np.abs(got.coarse_probs - want.coarse_probs.numpy()).max()))
    return {"onnx": str(out), "bytes": out.stat().st_size, "method": model.method, "outputs": names,
            "probe_windows": len(probe), "max_abs_probability_difference": diff, "opset": opset}


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise HmicError(f"{what} needs {module}: pip install 'hmic[onnx]'") from None


@dataclass
class OnnxRunner:
    """A ``predict.Runner`` over onnxruntime: takes waveform windows (the graph holds the front-end)."""

    session: object
    outputs: list[str]
    meta: dict
    inputs: str = "wave"
    backend: str = "onnx"
    precision: str = "fp32"

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> "OnnxRunner":
        """``threads``: onnxruntime's intra-op threads (default: PyTorch's, so both backends use the same cores)."""
        ort = _need("onnxruntime", "--backend onnx")
        path = Path(path)
        if not path.is_file():
            raise HmicError(f"{path} does not exist; make it with 'hmic export RUN --onnx {path}'")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") or device == "auto":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            elif device != "auto":
                raise HmicError(f"--device {device} with --backend onnx needs onnxruntime-gpu "
                                "(this onnxruntime has no CUDAExecutionProvider); use --device cpu")
        elif device not in ("cpu",):
            raise HmicError(f"--device {device} is not supported with --backend onnx; use cpu or cuda")
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:
            raise HmicError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0]})") from None
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        meta = json.loads(raw) if raw else {}
        if meta.get("format") != FORMAT:
            raise HmicError(f"{path} was not written by 'hmic export --onnx' (no '{METADATA_KEY}' metadata)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise HmicError(f"{path} has hmic ONNX format version {meta.get('format_version')}; this hmic reads "
                            f"version {FORMAT_VERSION}: export the run again")
        return cls(session, list(meta["outputs"]), meta)

    def __call__(self, x: np.ndarray) -> Outputs:
        got = dict(zip(self.outputs, self.session.run(self.outputs, {"wave": np.ascontiguousarray(x, dtype=np.float32)})))
        return Outputs(got["fine_probs"], got["coarse_probs"], got.get("attention"))


def load_onnx_tagger(path: str | Path, device: str = "cpu", precision: str = "fp32") -> Tagger:
    """A ``predict.Tagger`` over an exported file (or a run folder holding ``model.onnx``); fp32 only."""
    if precision not in ("auto", "fp32"):
        raise HmicError(f"--precision {precision} is not available with --backend onnx (the graph is float32); "
                        "use --precision fp32 or --backend torch")
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    runner = OnnxRunner.open(path, device)
    meta = runner.meta
    return Tagger.build(runner, _load_head(meta, str(path)), FrontendConfig(**meta["frontend"]),
                        int(meta["min_samples"]), meta["thresholds"], str(path))
