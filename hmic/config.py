"""What defines a training run (``TrainConfig``) and its YAML file (``--config``).

Importing this module does not import torch: the command line reads the defaults from here; checking
a method or backbone name (``validate``) imports their registries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .devices import check_device_name, check_precision
from .errors import HmicError
from .hierarchy import COARSE_RULES
from .runs import Run

if TYPE_CHECKING:
    from .augment import Augment


DEFAULT_LAMBDA = 0.8


@dataclass
class TrainConfig:
    """Everything that defines a run. Loadable from YAML (--config), overridden by CLI flags."""

    method: str = "gmp"
    lam: float = DEFAULT_LAMBDA  # λ: weight of the fine loss (a head without coarse loss uses 1)
    seed: int = 0
    arch: str = "cnn14"
    pretrained: str = "data/checkpoints/Cnn14_16k_mAP=0.438.pth"  # or "none"
    epochs: int = 30  # a project choice (paper silent); the best validation epoch is kept
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    schedule: str = "cosine"  # or "constant" after warm-up
    specaugment: bool = True
    embedding_dropout: float = 0.5  # PANNs' transfer recipe: dropout on the embedding before the head
    alpha: float = 1.0  # weight of a head's extra loss term (levelwise's consistency items)
    coarse_rule: str = "any"
    clip_seconds: float = 10.0
    data_dir: str = "data/openmic-2018"
    work_dir: str = ""
    hierarchy: str = ""
    runs_dir: str = "runs"
    device: str = "auto"
    precision: str = "auto"  # the backbone's: bf16 autocast on CUDA, float32 elsewhere; the head is float32
    limit_batches: int = 0  # train on at most this many batches per epoch (0: all); smoke tests, GPU check
    # augmentation (hmic.augment), off by default: Table 1 runs do not use it
    aug_gain_db: float = 0.0
    aug_shift_seconds: float = 0.0
    mixup_alpha: float = 0.0

    @property
    def augment(self) -> "Augment":
        from .augment import Augment

        return Augment(self.aug_gain_db, self.aug_shift_seconds, self.mixup_alpha)

    def validate(self) -> None:
        from .backbones import backbone_class
        from .heads import head_class

        head_class(self.method)
        backbone_class(self.arch)
        if not 0.0 <= self.lam <= 1.0:
            raise HmicError(f"--lambda must be in [0, 1], got {self.lam}")
        if self.coarse_rule not in COARSE_RULES:
            raise HmicError(f"--coarse-rule must be one of {', '.join(COARSE_RULES)}")
        if self.schedule not in ("cosine", "constant"):
            raise HmicError("--schedule must be cosine or constant")
        if self.epochs < 1 or self.batch_size < 1:
            raise HmicError("--epochs and --batch-size must be at least 1")
        check_device_name(self.device)
        check_precision(self.precision)
        if not 0.0 <= self.embedding_dropout < 1.0:
            raise HmicError(f"--embedding-dropout must be in [0, 1), got {self.embedding_dropout}")
        if self.limit_batches < 0:
            raise HmicError("--limit-batches must be 0 (all) or more")
        if self.aug_gain_db < 0 or self.aug_shift_seconds < 0 or self.mixup_alpha < 0:
            raise HmicError("--aug-gain-db, --aug-shift and --mixup must be 0 (off) or more")
        if self.aug_shift_seconds >= self.clip_seconds:
            raise HmicError(f"--aug-shift must be shorter than a clip ({self.clip_seconds} s)")

    def resolved(self) -> "TrainConfig":
        """The configuration a run really uses: λ as its head takes it (1 for a head without coarse loss)."""
        from .heads import head_class

        self.validate()
        return replace(self, lam=head_class(self.method).lambda_for(self.lam))

    def run(self) -> Run:
        cfg = self.resolved()
        return Run.at(cfg.runs_dir, cfg.method, cfg.lam, cfg.seed)

    def identity(self) -> dict:
        """The fields that make two runs the same run (device and folders aside)."""
        d = asdict(self)
        for k in ("device", "runs_dir"):
            d.pop(k)
        return d


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HmicError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise HmicError(f"config {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise HmicError(f"config {path}: expected a mapping of TrainConfig fields")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise HmicError(f"config {path}: unknown field '{unknown[0]}'; known fields: {', '.join(sorted(known))}")
    return data
