"""What defines a training run (``TrainConfig``) and its YAML file (``--config``).

Each field is also an option of ``hmic train`` (``hmic.cli`` builds them from ``TRAIN_OPTIONS``): its
flag is the field's name with dashes (``batch_size`` → ``--batch-size``; ``lam`` → ``--lambda``, since
``lambda`` is Python's), its help the field's ``help`` metadata, its default the field's. A new field
is one line here.

Importing this module does not import torch: the command line reads the defaults from here; checking
a method or backbone name (``validate``) imports their registries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hmic.models import BackboneConfig
from hmic.data.openmic import DATA_DIR_ENV, DEFAULT_DATA_DIR, WORK_DIR_ENV
from hmic.devices import DEVICE_HELP, check_device_name, check_precision
from hmic.data.download import CNN14, default_checkpoint
from hmic.errors import HmicError
from hmic.data.hierarchy import COARSE_RULES
from hmic.runs.run import Run

if TYPE_CHECKING:
    from hmic.training.augment import Augment


DEFAULT_LAMBDA = 0.8
PROTOCOLS = ("finetune", "frozen")


def option(default, help: str, **cli):
    """A TrainConfig field that is also an ``hmic train`` option (``cli``: flag, envvar, show_default, path)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything that defines a run. Loadable from YAML (--config), overridden by CLI flags."""

    method: str = option("gmp", "Head, or several comma-separated.", choices="heads")
    protocol: str = option("finetune", "finetune: the paper's protocol, all of the backbone trains; frozen: the "
                           "backbone is fixed and only the head trains, on embeddings cached by 'hmic embed' "
                           "(docs: 'The frozen protocol').")
    lam: float = option(DEFAULT_LAMBDA, "Weight λ of the fine loss (1 for heads without coarse loss).", flag="--lambda")
    level_weights: str = option("", "The loss weight of each level of the hierarchy, top first, comma-separated (e.g. "
                                "0.2,0.3,0.5 for a 3-level tree), instead of λ; several vectors separated by ';' make "
                                "a grid. Ignored by heads without coarse loss.",
                                show_default="derived from λ: (1-λ, λ) at depth 2; deeper, λ on the leaves and 1-λ "
                                "shared by the levels above")
    seed: int = option(0, "Train this one seed.")
    arch: str = option("cnn14", "Backbone.", choices="backbones")
    pretrained: str = option(str(default_checkpoint()), f"AudioSet CNN14 checkpoint ({CNN14.filename}: "
                             "'hmic download cnn14'), or 'none' to train from scratch; under the frozen protocol, the "
                             "backbone that was embedded: that file, an hmic run folder or an hmic checkpoint.")
    epochs: int = option(30, "Epochs; the best validation epoch is kept (0: only for the audioset method, whose run is written without training).")  # a project choice (paper silent)
    batch_size: int = option(16, "Batch size.")
    lr: float = option(1e-4, "Peak learning rate.")
    weight_decay: float = option(1e-4, "Adam weight decay.")
    warmup_epochs: float = option(5.0, "Linear warm-up epochs.")
    schedule: str = option("cosine", "After warm-up: cosine or constant.")
    specaugment: bool = option(BackboneConfig.specaugment, "PANNs SpecAugment.")
    embedding_dropout: float = option(BackboneConfig.embedding_dropout,
                                      "Dropout on the embedding before the head (PANNs' transfer recipe).")
    alpha: float = option(1.0, "Weight of a head's extra loss term (levelwise consistency items).")
    coarse_rule: str = option("any", f"Coarse targets from partial fine labels: {' or '.join(COARSE_RULES)}.")
    clip_seconds: float = option(10.0, "Clip length of the features.")
    data_dir: str = option(DEFAULT_DATA_DIR, "Root of an OpenMIC-layout folder.", envvar=DATA_DIR_ENV, path=True)
    work_dir: str = option("", "Derived data (split, features).", envvar=WORK_DIR_ENV, path=True,
                           show_default="<data-dir>.hmic")
    hierarchy: str = option("", "The hierarchy: a bundled taxonomy's name (e.g. openmic-hornbostel-sachs) or a file: a "
                            "2-level coarse: YAML, a nested tree: YAML, a node,parent CSV, or an AudioSet ontology "
                            "JSON with the subtree's root (FILE.json#Root name); docs/taxonomies.md.", path=True,
                            show_default="the hierarchy.yaml shipped with hmic")
    audioset_map: str = option("", "--method audioset: which AudioSet classes each fine tag is the max of (YAML).",
                               path=True, show_default="the openmic_audioset.yaml shipped with hmic")
    runs_dir: str = option("runs", "Where run folders go.", path=True)
    device: str = option("auto", f"{DEVICE_HELP}.")
    precision: str = option("auto", "The backbone's precision: auto (bf16 autocast where the device has it natively: CUDA, a CPU with avx512_bf16 or AMX; else float32), bf16 or "
                            "fp32; the head, loss and saved probabilities are always float32.")
    limit_batches: int = option(0, "Train on at most this many batches per epoch; 0 = all (smoke tests).")
    compile: bool = option(False, "torch.compile the model for training.")
    keep_last: bool = option(False, "Keep last.pt (the resume checkpoint, with the optimiser state) once the run has finished.")
    tracker: str = option("none", "Per-epoch curves: none, or tensorboard (event files in each run's tensorboard/ folder; "
                          "'tensorboard --logdir RUNS_DIR' shows the grid; needs hmic's tensorboard extra).")
    # finetune protocol with the backbone kept fixed (learning rate 0 on every backbone parameter, the
    # backbone in eval mode): the frozen protocol's function at fine-tuning cost, its reference in the tests
    fixed_backbone: bool = False
    # augmentation (hmic.training.augment), off by default: Table 1 runs do not use it
    aug_gain_db: float = option(0.0, "Augmentation: random gain of up to ± this many dB per clip (0: off).")
    aug_shift_seconds: float = option(0.0, "Augmentation: random circular time shift of up to ± this many seconds (0: off).")
    mixup_alpha: float = option(0.0, "Augmentation: mixup with Beta(α, α) weights; presence labels mixed under "
                                "partial observation (0: off).")

    def __post_init__(self):
        # one canonical text per vector (a YAML list, or numbers written another way, name the same run)
        self.level_weights = canonical_level_weights(self.level_weights)

    @property
    def level_weight_values(self) -> tuple[float, ...] | None:
        """--level-weights as numbers (top level first), or None when λ stands for them."""
        if not self.level_weights:
            return None
        if ";" in self.level_weights:
            raise HmicError(f"--level-weights {self.level_weights!r}: a run has one vector; several separated by ';' "
                            "are a grid of 'hmic train'")
        return parse_level_weights(self.level_weights)

    @property
    def augment(self) -> "Augment":
        from hmic.training.augment import Augment

        return Augment(self.aug_gain_db, self.aug_shift_seconds, self.mixup_alpha)

    def validate(self) -> None:
        from hmic.models.backbones import backbone_class
        from hmic.models.heads import head_class
        from hmic.training.tracker import require_tracker

        head_class(self.method)
        backbone_class(self.arch)
        if not 0.0 <= self.lam <= 1.0:
            raise HmicError(f"--lambda must be in [0, 1], got {self.lam}")
        weights = self.level_weight_values  # the count is checked against the hierarchy (hmic.training.grid)
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise HmicError(f"--level-weights {self.level_weights}: the weights must be non-negative and not all 0")
        if self.coarse_rule not in COARSE_RULES:
            raise HmicError(f"--coarse-rule must be one of {', '.join(COARSE_RULES)}")
        if self.schedule not in ("cosine", "constant"):
            raise HmicError("--schedule must be cosine or constant")
        if self.epochs < 1 or self.batch_size < 1:
            if self.epochs == 0 and self.batch_size >= 1 and head_class(self.method).ready_untrained:
                pass  # a head that comes trained (audioset): the run is written without training
            else:
                raise HmicError("--epochs and --batch-size must be at least 1 (--epochs 0: only --method audioset, "
                                "whose weights come trained)")
        if head_class(self.method).ready_untrained and (not self.pretrained or self.pretrained.lower() == "none"):
            raise HmicError(f"--method {self.method} reads PANNs' AudioSet classifier from --pretrained: pass the "
                            f"AudioSet CNN14 checkpoint ({CNN14.filename}: 'hmic download cnn14')")
        check_device_name(self.device)
        require_tracker(self.tracker)
        check_precision(self.precision)
        if not 0.0 <= self.embedding_dropout < 1.0:
            raise HmicError(f"--embedding-dropout must be in [0, 1), got {self.embedding_dropout}")
        if self.limit_batches < 0:
            raise HmicError("--limit-batches must be 0 (all) or more")
        if self.aug_gain_db < 0 or self.aug_shift_seconds < 0 or self.mixup_alpha < 0:
            raise HmicError("--aug-gain-db, --aug-shift-seconds and --mixup-alpha must be 0 (off) or more")
        if self.aug_shift_seconds >= self.clip_seconds:
            raise HmicError(f"--aug-shift-seconds must be shorter than a clip ({self.clip_seconds} s)")
        if self.protocol not in PROTOCOLS:
            raise HmicError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.protocol == "frozen" or self.fixed_backbone:
            refused = [name for name, on in (("--specaugment", self.specaugment and self.protocol == "frozen"),
                                             ("--aug-gain-db", self.aug_gain_db), ("--aug-shift-seconds", self.aug_shift_seconds),
                                             ("--mixup-alpha", self.mixup_alpha)) if on]
            if self.compile and self.protocol == "frozen":
                raise HmicError("--compile compiles the fine-tuning forward; the frozen protocol's stacked head step "
                                "is not compiled: drop --compile with --protocol frozen")
            if refused:
                raise HmicError(f"{', '.join(refused)} act on the log-mel input, which a fixed backbone's cached "
                                "embeddings no longer have: drop them with --protocol frozen")
            if not self.pretrained or self.pretrained.lower() == "none":
                raise HmicError("--protocol frozen needs a trained backbone: pass --pretrained (an AudioSet CNN14 "
                                "file, an hmic run folder or checkpoint), the one 'hmic embed' embedded")

    def resolved(self) -> "TrainConfig":
        """The configuration a run really uses: λ as its head takes it (1 for a head without coarse loss)."""
        from hmic.models.heads import head_class

        cfg = self
        if cfg.protocol == "frozen" and cfg.specaugment:  # the default is on; it cannot act on cached embeddings
            cfg = replace(cfg, specaugment=False)  # (asked for explicitly, the command line refuses it: hmic.cli)
        if cfg.protocol == "frozen" and cfg.pretrained and cfg.pretrained.lower() != "none":
            # the backbone a frozen run sits on, as one path whatever folder the command ran from
            cfg = replace(cfg, pretrained=str(Path(cfg.pretrained).expanduser().resolve()))
        cfg.validate()
        head = head_class(cfg.method)
        weights = cfg.level_weight_values
        if weights is not None and head.uses_coarse_loss:
            # λ then names the leaves' share of the loss (at depth 2, --level-weights 0.2,0.8 is λ 0.8)
            return replace(cfg, lam=weights[-1] / sum(weights))
        return replace(cfg, lam=head.lambda_for(cfg.lam), level_weights="")

    def run(self) -> Run:
        cfg = self.resolved()
        return Run.at(cfg.runs_dir, cfg.method, cfg.lam, cfg.seed, cfg.level_weight_values)

    def record(self) -> dict:
        """The configuration as a run's config.json and checkpoints hold it: every field, but no
        level_weights key when λ stands for them (a run's files then read as before --level-weights)."""
        d = asdict(self)
        if not d["level_weights"]:
            d.pop("level_weights")
        return d

    def identity(self) -> dict:
        """The fields that make two runs the same run (device and folders aside). Without level weights
        the key is absent, as in the config.json of a run made before --level-weights existed."""
        d = self.record()
        for k in ("device", "runs_dir", "keep_last", "tracker"):
            d.pop(k)
        return d


def parse_level_weights(text: str) -> tuple[float, ...]:
    """'0.2,0.3,0.5' → (0.2, 0.3, 0.5); anything else is an error naming the option."""
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise HmicError(f"--level-weights expects comma-separated numbers, one per level top first (e.g. "
                        f"0.2,0.3,0.5), got {text!r}") from None
    if not all(math.isfinite(w) for w in weights):
        raise HmicError(f"--level-weights {text!r}: the weights must be finite numbers")
    return weights


def canonical_level_weights(value) -> str:
    """The text of --level-weights as a config holds it: numbers as Python writes them, vectors separated
    by ';' (a YAML list of numbers is one vector); text that does not parse is kept for ``validate`` to refuse."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    vectors = [v.strip() for v in str(value).split(";") if v.strip()]
    try:
        return ";".join(",".join(repr(float(w)) for w in v.split(",")) for v in vectors)
    except ValueError:
        return str(value).strip()


def level_weights_grid(text: str) -> list[str]:
    """The vectors of a --level-weights value ('0.2,0.3,0.5;0.1,0.1,0.8'), each checked; [''] when empty (λ)."""
    vectors = [v for v in canonical_level_weights(text).split(";") if v]
    for v in vectors:
        parse_level_weights(v)
    return vectors or [""]


def flag(f) -> str:
    """The ``hmic train`` flag of a TrainConfig field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


TRAIN_OPTIONS = tuple(f for f in fields(TrainConfig) if "help" in f.metadata)


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
