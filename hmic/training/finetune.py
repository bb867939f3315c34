"""`hmic train`: the paper's protocol for one (method, λ or level weights, seed) run: the whole network fine-tuned, or
its head alone over a fixed backbone (``fixed_backbone``). The epochs, checkpoints and resume belong to
``hmic.training.loop``; the run's folder and files to ``hmic.runs.run.Run``; the grid of runs to
``hmic.training.grid``.
"""

from __future__ import annotations

import shutil
import time

import torch

from hmic.audio.decoding import FrontendConfig
from hmic.data.hierarchy import Hierarchy
from hmic.devices import autocast, resolve_device
from hmic.errors import HmicError
from hmic.models import BackboneConfig
from hmic.models.heads import hierarchical_loss
from hmic.models.model import CachedEmbedding, HierarchicalModel
from hmic.runs.provenance import failures_recorded, record_session
from hmic.runs.run import Run
from hmic.training.augment import augment_batch
from hmic.training.config import TrainConfig
from hmic.training.data import ResidentPart, TrainingData, batches, load_training_data
from hmic.training.loop import (RunState, dropout_rng, epoch_generator, head_seed, level_losses,
                                lr_at, predict_part, train_epochs)
from hmic.training.untrained import pretrained_head


def init_head(cfg: TrainConfig, hierarchy: Hierarchy, dim: int) -> torch.nn.Module:
    """The head of a run with a fixed backbone (frozen protocol, or its fixed-backbone reference), drawn
    from its seed alone, apart from torch's global generator: the same head whatever built the backbone."""
    from hmic.models.heads import build_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed(cfg.seed))
        return pretrained_head(build_head(cfg.method, dim, hierarchy), cfg)


def build_model(cfg: TrainConfig, hierarchy: Hierarchy, frontend: FrontendConfig, warn=None,
                embedding_dim: int | None = None) -> HierarchicalModel:
    """The run's model; with pretrained weights, a checkpoint whose frozen front-end differs from the
    features' is reported through ``warn`` (the features are what the model trains on).

    Frozen protocol: no backbone (``CachedEmbedding`` of ``embedding_dim``: the store's rows are its input).
    Fixed-backbone fine-tuning: the backbone of ``cfg.pretrained`` (a CNN14 file or an hmic run), kept fixed."""
    backbone = BackboneConfig(cfg.arch, specaugment=cfg.specaugment, embedding_dropout=cfg.embedding_dropout)
    if cfg.protocol == "frozen":
        return HierarchicalModel(backbone, cfg.method, hierarchy, backbone=CachedEmbedding(backbone, embedding_dim),
                                 head=init_head(cfg, hierarchy, embedding_dim))
    if cfg.fixed_backbone:
        from hmic.models.loading import load_backbone

        fixed = load_backbone(cfg.arch, cfg.pretrained, frontend, warn).backbone
        return HierarchicalModel(backbone, cfg.method, hierarchy, backbone=fixed,
                                 head=init_head(cfg, hierarchy, fixed.embedding_dim))
    model = HierarchicalModel(backbone, cfg.method, hierarchy)
    if cfg.pretrained and cfg.pretrained.lower() != "none":
        model.backbone.check_frontend(frontend)
        model.backbone.load_pretrained(cfg.pretrained, frontend, strict_frontend=False, warn=warn)
    pretrained_head(model.head, cfg)
    return model


def validation_losses(model, part, store, device, precision: str = "auto", batch_size: int = 32,
                      scores: bool = False) -> tuple[dict, dict]:
    """The validation BCE per level of the saved (float32) probabilities (with ``scores``, a tracked
    run's macro ROC-AUC and PR-AUC per level too), and the predictions."""
    pred = predict_part(model, part, store, device, precision, batch_size)
    return level_losses(pred["fine_probs"], pred["coarse_probs"], part, scores), pred


def open_run(cfg: TrainConfig, resume: bool = False, force: bool = False, record: bool = True) -> tuple[Run, dict | None]:
    """May ``cfg`` train in its folder? Returns (run, its summary if it already finished).

    Refuses a folder holding another configuration, and an unfinished run without ``resume``;
    ``force`` deletes the folder so the run starts again. A run that will train gets this session's
    provenance (``hmic.runs.provenance``) unless ``record`` is False (a driver that only checks).
    """
    cfg = cfg.resolved()
    run = cfg.run()
    if run.started and not force:
        previous = TrainConfig(**run.config())
        if previous.identity() != cfg.identity():
            raise HmicError(f"{run} holds a run with another configuration; pass --force to start it again")
        if run.finished:
            return run, run.done()
        if not resume and run.resumable:
            raise HmicError(f"{run} holds an unfinished run; pass --resume to continue it or --force to restart")
    if force and run.folder.exists():
        shutil.rmtree(run.folder)
    if record:
        record_session(run.folder, resumed=resume and run.resumable, config=cfg.record())
    return run, None


def train_run(cfg: TrainConfig, resume: bool = False, force: bool = False, console=None, progress: bool = True,
              data: TrainingData | None = None, stop_after_epoch: int | None = None) -> dict:
    """Train one (method, λ, seed) run into its folder. Returns the summary (done.json).

    The steps: open the run folder (``open_run``), build the model and its optimiser, then the epochs of
    ``hmic.training.loop.train_epochs`` (resume from last.pt, train, validate, commit, finish). ``stop_after_epoch`` simulates an interruption (for
    tests): it returns after that epoch, leaving the folder exactly as a killed run would.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    cfg = cfg.resolved()
    if cfg.protocol == "frozen":
        raise HmicError("train_run trains the fine-tuning protocol; frozen-protocol runs train through "
                        "hmic.training.frozen.train_frozen (or hmic.training.grid.run_grid, as 'hmic train --protocol frozen' does)")
    with cfg.run().exclusive(), failures_recorded(cfg.run().folder):  # one writer per run folder; an error is kept in it
        return _train_locked(cfg, resume, force, console, progress, data, stop_after_epoch)


class SingleRun:
    """One fine-tuning run as ``hmic.training.loop`` trains it: its model, its optimiser, and its data."""

    predict_batch = 32
    embedding = None

    def __init__(self, state: RunState, optimizer: torch.optim.Optimizer, data: TrainingData, device: torch.device,
                 forward=None):
        cfg = state.cfg
        self.members, self.cfg, self.optimizer, self.data, self.device = [state], cfg, optimizer, data, device
        self.model, self.forward = state.model, forward or state.model
        self.resident = ResidentPart.upload(data.parts["train"], data.store, device)
        weights = f"level weights {cfg.level_weights}" if cfg.level_weights else f"λ={cfg.lam:.2f}"
        self.description = f"{cfg.method} {weights} seed {cfg.seed}"

    def train_epoch(self, epoch: int, steps: int, step_done) -> tuple[list[float], float, dict]:
        loss, lr, shared = train_epoch(self.model, self.optimizer, self.data, self.cfg, epoch, steps, self.device,
                                       step_done, self.resident, self.forward)
        return [loss], lr, shared

    def validate(self) -> tuple[list[dict], float]:
        t_val = time.perf_counter()
        val, _ = validation_losses(self.model, self.data.parts["val"], self.data.store, self.device,
                                   self.cfg.precision, self.predict_batch, scores=self.cfg.tracker != "none")
        return [val], time.perf_counter() - t_val

    def training_state(self, member: int = 0) -> dict:
        """The optimiser and the RNG states (torch's global generator draws dropout and SpecAugment)."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        return {"optimizer": self.optimizer.state_dict(), "rng": rng}

    def restore(self, training: dict) -> None:
        self.optimizer.load_state_dict(training["optimizer"])
        torch.set_rng_state(training["rng"]["torch"])
        if self.device.type == "cuda" and training["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(training["rng"]["cuda"])


def _train_locked(cfg: TrainConfig, resume: bool, force: bool, console, progress: bool, data: TrainingData | None,
                  stop_after_epoch: int | None) -> dict:
    run, done = open_run(cfg, resume, force)
    if done is not None:
        console.print(f"[green]✓[/] {run} already finished, skipping")
        return done
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # weight init, dropout and SpecAugment draw from torch's generator
    data = data or load_training_data(cfg)
    if cfg.level_weights:
        data.hierarchy.check_level_weights(cfg.level_weight_values)
    frontend = data.store.frontend  # the features' own front-end goes into the checkpoints
    # channels-last convolutions: faster on CUDA and on CPU (oneDNN) for CNN14
    model = build_model(cfg, data.hierarchy, frontend, warn=lambda m: console.print(f"[yellow]{m}[/]"))
    model = model.to(device, memory_format=torch.channels_last)
    # a fixed backbone: learning rate 0 on every backbone parameter (lr_scale, applied in train_epoch)
    groups = ([{"params": list(model.backbone.parameters()), "lr_scale": 0.0},
               {"params": [p for n, p in model.named_parameters() if not n.startswith("backbone.")]}]
              if cfg.fixed_backbone else model.parameters())
    # fused Adam on CUDA, and for a fixed backbone (the frozen protocol's stacks use that kernel too)
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 **({"fused": True} if device.type == "cuda" or cfg.fixed_backbone else {}))
    if device.type == "cuda":  # cuDNN picks its fastest kernels for the fixed input shape
        torch.backends.cudnn.benchmark = True
    state = RunState(cfg, model, frontend)
    trainer = SingleRun(state, optimizer, data, device, torch.compile(model) if cfg.compile else None)
    training = state.begin(resume, data, console)
    if training is not None:
        trainer.restore(training)
    (summary,) = train_epochs(trainer, data, device, state.start_epoch, console, progress, stop_after_epoch)
    return summary


def train_epoch(model: HierarchicalModel, optimizer: torch.optim.Optimizer, data: TrainingData, cfg: TrainConfig,
                epoch: int, steps_per_epoch: int, device: torch.device, step_done=None,
                resident: ResidentPart | None = None, forward=None) -> tuple[float, float, dict]:
    """One pass over the shuffled train part (at most ``steps_per_epoch`` batches). Returns (mean
    training loss, the learning rate of the last step, the epoch's split: data and compute seconds,
    clips). ``step_done(running mean loss, or None on CUDA)`` after each step. On CUDA the losses are
    summed on the device and read once (no sync per step), and batches come from ``resident`` (the part
    already on the GPU) when given, else through pinned memory."""
    model.train()
    if cfg.fixed_backbone:  # the backbone in eval mode (BatchNorm statistics, no dropout inside it)
        model.backbone.eval()
        model.embedding_dropout.draw_from(dropout_rng(cfg.seed, epoch))
    train, frontend = data.parts["train"], data.store.frontend
    order = torch.randperm(len(train.keys), generator=epoch_generator(cfg.seed, epoch)).numpy()
    aug_gen = epoch_generator(cfg.seed, epoch, "augment")

    def coarse_of(fine_targets, fine_mask):  # the coarse labels of a mixture, by the run's coarse rule
        return data.hierarchy.coarse_targets(fine_targets, fine_mask, cfg.coarse_rule)

    on_gpu = device.type == "cuda"
    if resident is not None and not cfg.augment.active:  # the augmentations draw on the host
        source = resident.batches(cfg.batch_size, order)
    else:
        source = batches(train, data.store, cfg.batch_size, order, pin=on_gpu)
    level_weights = cfg.level_weight_values  # None: λ stands for them (the paper's arithmetic at depth 2)
    total = torch.zeros((), dtype=torch.float64, device=device)  # float64 sum of float32 losses: as Python's
    n_batches, clips, lr, data_seconds = 0, 0, cfg.lr, 0.0
    started = time.perf_counter()
    for i in range(steps_per_epoch):
        fetch = time.perf_counter()
        batch = next(source, None)
        if batch is None:
            break
        x, ft, fm, ct, cm, _ = batch
        if cfg.augment.active:
            x, ft, fm, ct, cm = augment_batch(x, ft, fm, ct, cm, cfg.augment, aug_gen,
                                              frontend.sample_rate / frontend.hop_length, coarse_of)
        x, ft, fm, ct, cm = (t.to(device, non_blocking=True) for t in (x, ft, fm, ct, cm))
        data_seconds += time.perf_counter() - fetch
        lr = lr_at(epoch * steps_per_epoch + i, steps_per_epoch, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with autocast(device, cfg.precision):
            out = (forward or model)(x)
        loss = hierarchical_loss(out, model.head, ft, fm, ct, cm, cfg.lam, cfg.alpha, level_weights=level_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double()
        n_batches += 1
        clips += len(x)
        if step_done is not None:
            step_done(None if on_gpu else total.item() / n_batches)
    mean_loss = total.item() / n_batches  # on CUDA: the epoch's one synchronisation
    split = {"data_seconds": round(data_seconds, 3),
             "compute_seconds": round(time.perf_counter() - started - data_seconds, 3), "train_clips": clips}
    return mean_loss, lr, split
