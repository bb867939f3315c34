"""Tagging over onnxruntime without importing torch: ``hmic predict --backend onnx``.

An ONNX file written by ``hmic export --onnx`` (with its weights in ``<file>.data`` beside it) holds the whole model from 16-kHz waveform windows to
probabilities (``hmic.audio.logmel.GraphLogMel`` inside), and in its metadata (key ``hmic``, JSON) what a
tagger needs besides: hierarchy, tuned thresholds, front-end parameters, the minimum input length and
how the head explains a coarse decision (``hmic.models.explain.Explainer``). Decoding, downmixing and
resampling are ``hmic.audio.decoding`` (numpy). So this path imports numpy, soundfile and onnxruntime only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmic.audio.decoding import FrontendConfig
from hmic.errors import HmicError
from hmic.models.explain import Explainer
from hmic.data.hierarchy import Hierarchy
from hmic.models.inference import Outputs
from hmic.tagging.tagger import FileTagger

FORMAT = "hmic-onnx"
FORMAT_VERSION = 4  # 2: the head's explanation rule as data ("explainer"); 3: the weights file's digest ("weights");
# 4: the hierarchy of any depth (its ``Hierarchy.to_dict`` record, version 2 deeper than 2 levels; resatt's
# attention output (B, S, C) over ``Hierarchy.attention_sources``)
READS = (3, 4)  # version 3 is a 2-level hierarchy's file of the same layout: read unchanged
METADATA_KEY = "hmic"


def need(module: str, what: str):
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise HmicError(f"{what} needs {module}: pip install 'hmic[onnx]'") from None


def weights_path(model: Path) -> Path:
    """Where an exported graph keeps its weights: ``model.onnx`` → ``model.onnx.data`` beside it."""
    return model.with_name(model.name + ".data")


DIGEST_BLOCKS, DIGEST_BLOCK = 64, 1 << 16


def weights_digest(path: Path) -> dict:
    """The size and a sampled sha256 (64 blocks of 64 KiB spread over the file, the last one included)
    of an exported graph's weights file: the graph records it, and the runner refuses weights written
    by another export (a crash between the two files' moves, or files mixed up by hand). Sampled, so
    that opening stays fast for 320 MB of CNN14 weights; any other model's weights differ in most blocks."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for i in range(DIGEST_BLOCKS):
            f.seek(max(0, min(size - DIGEST_BLOCK, i * size // DIGEST_BLOCKS)))
            h.update(f.read(DIGEST_BLOCK))
    return {"bytes": size, "sampled_sha256": h.hexdigest()}


def default_threads() -> int:
    """OMP_NUM_THREADS when set (PyTorch reads it too, so both backends then use as many threads),
    else the cores this process may use."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class OnnxRunner:
    """A ``hmic.tagging.batching.Runner`` over onnxruntime: takes waveform windows (the graph holds the front-end)."""

    session: object
    outputs: list[str]
    meta: dict
    inputs: str = "wave"
    backend: str = "onnx"
    precision: str = "fp32"

    @classmethod
    def open(cls, path: str | Path, device: str = "cpu", threads: int | None = None) -> "OnnxRunner":
        """``threads``: onnxruntime's intra-op threads (default: ``default_threads()``)."""
        ort = need("onnxruntime", "--backend onnx")
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
            options.intra_op_num_threads = threads or default_threads()
            # EXTENDED: the portable fusions (conv+BN, ...) in ~0.1 s; ALL adds hardware-specific layouts
            # that run ~10% faster but take seconds to prepare at every start (docs/measurements.md, "Tagging speed")
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:
            hint = ""
            if not weights_path(path).is_file():
                hint = f"; its weights file {weights_path(path).name} must lie beside it"
            raise HmicError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0]}){hint}") from None
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        meta = json.loads(raw) if raw else {}
        if meta.get("format") != FORMAT:
            raise HmicError(f"{path} was not written by 'hmic export --onnx' (no '{METADATA_KEY}' metadata)")
        version = meta.get("format_version")
        if version not in READS:
            said = "no format version (an early hmic)" if version is None else f"hmic ONNX format version {version}"
            raise HmicError(f"{path} has {said}; this hmic reads versions {', '.join(map(str, READS))}: export the run "
                            f"again with 'hmic export RUN --onnx {path}'")
        if meta.get("weights") != weights_digest(weights_path(path)):
            raise HmicError(f"{weights_path(path)} is not the weights file {path} was exported with (its digest "
                            "differs: written by another export?); export the run again, keeping the two files together")
        return cls(session, list(meta["outputs"]), meta)

    def __call__(self, x: np.ndarray) -> Outputs:
        got = dict(zip(self.outputs, self.session.run(self.outputs, {"wave": np.ascontiguousarray(x, dtype=np.float32)})))
        return Outputs(got["fine_probs"], got["coarse_probs"], got.get("attention"))


def load_onnx_tagger(path: str | Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None) -> FileTagger:
    """A ``FileTagger`` over an exported file (or a run folder holding ``model.onnx``); fp32 only."""
    if precision not in ("auto", "fp32"):
        raise HmicError(f"--precision {precision} is not available with --backend onnx (the graph is float32); "
                        "use --precision fp32 or --backend torch")
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    runner = OnnxRunner.open(path, device, threads)
    meta = runner.meta
    hierarchy = Hierarchy.from_dict(meta["hierarchy"], source=str(path))
    return FileTagger.build(runner, hierarchy, meta["method"], Explainer.from_dict(meta["explainer"], hierarchy.membership),
                        FrontendConfig(**meta["frontend"]), int(meta["min_samples"]), meta["thresholds"], str(path),
                            config=meta.get("config"))
