"""``FileTagger``: a trained run made ready to tag audio files of any length, over PyTorch
(``FileTagger.load``) or onnxruntime (``hmic.tagging.onnxrun.load_onnx_tagger``). ``stream(files)`` is the
library path: workers prepare files ahead of the model (``workers``), windows of several files share
batches (``batching``), and each file's result (``results.file_result``) comes back in input order.
Importing this module does not import torch: over onnxruntime, nothing does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from hmic.audio.decoding import AudioError, FrontendConfig
from hmic.devices import resolve_device, resolve_precision
from hmic.errors import HmicError
from hmic.evaluation.decision import DECISIONS, DEFAULT_DECISION
from hmic.models.explain import Explainer
from hmic.data.hierarchy import Hierarchy
from hmic.models.inference import TorchRunner
from hmic.tagging.batching import Runner, run_batched
from hmic.tagging.results import file_result
from hmic.evaluation.thresholds import TagThresholds
from hmic.tagging.workers import PrepareJob, prepare_all

DEFAULT_HOP_SECONDS = 5.0  # between 10-s windows
DEFAULT_AGGREGATE = "max"  # song-level aggregation of window probabilities ("max" or "mean")
AGGREGATES = ("max", "mean")
DEFAULT_BATCH_SIZE = 8  # windows per forward pass


@dataclass
class FileTagger:
    runner: Runner
    hierarchy: Hierarchy
    method: str
    explainer: Explainer  # how the head explains a coarse decision (hmic.models.explain)
    frontend: FrontendConfig
    min_samples: int
    thresholds: TagThresholds
    source: str
    # the audioset head: (the AudioSet class names it reads (K), the fine tag each feeds (K,)), so that a
    # result names the class that carried each fine tag; None for the other heads
    fine_sources: tuple | None = None
    info: dict = field(default_factory=dict)  # which model this is (``hmic.tagging.model_info.describe_model``)
    decision: str = DEFAULT_DECISION  # how marks follow the hierarchy (``hmic.evaluation.decision``)

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, device: str = "cpu", precision: str = "fp32") -> "FileTagger":
        """From a run folder (its best.pt) or an hmic checkpoint, over PyTorch; needs tuned thresholds.
        (An exported ONNX file: ``hmic.tagging.onnxrun.load_onnx_tagger``.)"""
        from hmic.runs.run import load_tuned_checkpoint
        from hmic.environment import require_torch_stack

        require_torch_stack()
        dev = resolve_device(device)
        precision = resolve_precision(dev, precision)
        ckpt, thresholds = load_tuned_checkpoint(run_or_checkpoint)
        model = ckpt.model.eval()
        return cls.from_model(model, ckpt.frontend, thresholds, str(ckpt.path), dev, precision, ckpt.config)

    @classmethod
    def from_model(cls, model, frontend: FrontendConfig, thresholds: dict, source: str, dev, precision: str,
                   config: dict | None = None) -> "FileTagger":
        """Over a loaded PyTorch ``HierarchicalModel`` in eval mode; ``config``: its run's training
        configuration, for the model's description (None: a ready model, no run)."""
        import torch

        model.backbone.for_inference()  # the same function, faster (docs/methods.md, "Project choices")
        model = model.to(dev, memory_format=torch.channels_last)
        runner = TorchRunner(model, dev, precision)
        tagger = cls.build(runner, model.hierarchy, model.method, model.head.explainer(), frontend,
                           model.backbone.min_samples(frontend), thresholds, source, config=config)
        if hasattr(model.head, "fine_sources"):
            tagger.fine_sources = model.head.fine_sources()
        return tagger

    @classmethod
    def audioset(cls, checkpoint: str | Path | None = None, mapping: str | Path | None = None,
                 hierarchy: Hierarchy | None = None, device: str = "cpu", precision: str = "fp32",
                 thresholds: dict | None = None, warn=None) -> "FileTagger":
        """The AudioSet classifier of PANNs' CNN14 checkpoint as a ready tagger, no run needed
        (docs/audioset-model.md): ``checkpoint`` defaults to 'hmic download cnn14''s file, ``mapping`` to
        the shipped openmic_audioset.yaml, ``hierarchy`` to the shipped one, ``thresholds`` to
        ``hmic.models.audioset.DEFAULT_THRESHOLD`` for every tag."""
        from hmic.environment import require_torch_stack

        require_torch_stack()
        from hmic.models.audioset import audioset_model, checkpoint_path, default_thresholds

        dev = resolve_device(device)
        precision = resolve_precision(dev, precision)
        path = checkpoint_path(checkpoint)
        frontend = FrontendConfig()
        model = audioset_model(path, mapping, hierarchy, frontend, warn)
        tagger = cls.from_model(model, frontend, thresholds or default_thresholds(model.hierarchy), str(path), dev,
                                precision, config={"arch": "cnn14", "protocol": "ready model (no training)"})
        tagger.info.update(dataset="AudioSet (the checkpoint's own classifier, through hmic's mapping)",
                           stand_in=False, notice=None)
        return tagger

    @classmethod
    def build(cls, runner: Runner, hierarchy: Hierarchy, method: str, explainer: Explainer, frontend: FrontendConfig,
              min_samples: int, thresholds: dict, source: str, config: dict | None = None,
              decision: str = DEFAULT_DECISION) -> "FileTagger":
        """``thresholds``: as stored by tune-thresholds ({"fine": {tag: t}, "coarse": …, "song": …});
        ``config``: the run's training configuration, for the model's description."""
        from hmic.tagging.model_info import describe_model

        if decision not in DECISIONS:
            raise HmicError(f"--decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        return cls(runner, hierarchy, method, explainer, frontend, min_samples,
                   TagThresholds.from_stored(thresholds, hierarchy, frontend.clip_seconds, source), source,
                   info=describe_model(source, config, thresholds, method), decision=decision)

    def prepare_job(self, hop_seconds: float) -> PrepareJob:
        return PrepareJob(self.frontend, self.min_samples, hop_seconds, self.runner.inputs)

    def tag(self, path: str | Path, hop_seconds: float = DEFAULT_HOP_SECONDS, aggregate: str = DEFAULT_AGGREGATE,
            batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
        """Tag one audio file of any length (raises AudioError). The JSON schema: docs/tagging.md."""
        for _, result, error in self.stream([path], hop_seconds, aggregate, batch_size):
            if error is not None:
                raise AudioError(error)
            return result
        raise AssertionError("unreachable")

    def stream(self, paths: Iterable[str | Path], hop_seconds: float = DEFAULT_HOP_SECONDS,
               aggregate: str = DEFAULT_AGGREGATE, batch_size: int = DEFAULT_BATCH_SIZE,
               workers: int = 0) -> Iterator[tuple[str, dict | None, str | None]]:
        """(path, result, None) or (path, None, error) for every file, in input order."""
        if aggregate not in AGGREGATES:
            raise HmicError(f"--aggregate must be {' or '.join(AGGREGATES)}")
        if hop_seconds <= 0:
            raise HmicError("--hop must be positive")
        if batch_size < 1:
            raise HmicError("--batch-size must be at least 1")
        prepared = prepare_all([str(p) for p in paths], self.prepare_job(hop_seconds), workers)
        for file, windows in run_batched(prepared, self.runner, batch_size):
            if windows is None:
                yield file.path, None, file.error
            else:
                yield file.path, file_result(self, file, windows, hop_seconds, aggregate), None
