"""`hmic train`: the paper's protocol for one (method, λ, seed) run (README, "Methods" and "Project
choices"). The run's folder and files belong to ``hmic.runs.run.Run``; the grid of runs to ``hmic.training.grid``.

A killed run continues with ``resume=True`` from last.pt and ends bit-identical to an uninterrupted
one on CPU (model, optimiser, scheduler position and RNG states are all in the checkpoint).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict

import numpy as np
import torch

from hmic.runs.provenance import record_training_data
from hmic.audio.decoding import FrontendConfig
from hmic.training.augment import augment_batch
from hmic.models import BackboneConfig
from hmic.models.checkpoint import read_state, save_checkpoint
from hmic.training.config import TrainConfig
from hmic.devices import autocast, resolve_device
from hmic.errors import HmicError
from hmic.data.features import RowStore
from hmic.models.heads import hierarchical_loss
from hmic.data.hierarchy import Hierarchy
from hmic.models.inference import infer
from hmic.evaluation.metrics import masked_bce
from hmic.models.model import CachedEmbedding, HierarchicalModel
from hmic.runs.run import Run
from hmic.training.data import ResidentPart, SplitPart, TrainingData, batches, load_training_data

# The per-epoch generators of a run: the shuffling order and the augmentation draws, seeded apart
# from torch's global generator (weights, dropout, SpecAugment) so that neither shifts the other.
EPOCH_SEED_STRIDE = 100_003  # a prime: (seed, epoch) pairs of runs with < 100,003 epochs never collide
AUGMENT_SEED_OFFSET = 7_919  # the augmentation stream of an epoch, away from its order stream
DROPOUT_SEED_OFFSET = 50_021  # the embedding-dropout stream of a fixed-backbone run's epoch (numpy's PCG64)
HEAD_SEED_OFFSET = 99_991  # the head initialisation of a fixed-backbone run


def epoch_generator(seed: int, epoch: int, offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch + offset)


def lr_at(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over warmup_epochs, then cosine decay to 0 at the end (or constant)."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1.0, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def init_head(cfg: TrainConfig, hierarchy: Hierarchy, dim: int) -> torch.nn.Module:
    """The head of a run with a fixed backbone (frozen protocol, or its fixed-backbone reference), drawn
    from its seed alone, apart from torch's global generator: the same head whatever built the backbone."""
    from hmic.models.heads import build_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * EPOCH_SEED_STRIDE + HEAD_SEED_OFFSET)
        return build_head(cfg.method, dim, hierarchy)


def dropout_rng(seed: int, epoch: int) -> np.random.Generator:
    """The embedding-dropout stream of one epoch of a fixed-backbone run (``hmic.models.model.dropout_keep``)."""
    return np.random.Generator(np.random.PCG64(seed * EPOCH_SEED_STRIDE + epoch + DROPOUT_SEED_OFFSET))


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
        from hmic.models.checkpoint import load_backbone

        fixed = load_backbone(cfg.arch, cfg.pretrained, frontend, warn).backbone
        return HierarchicalModel(backbone, cfg.method, hierarchy, backbone=fixed,
                                 head=init_head(cfg, hierarchy, fixed.embedding_dim))
    model = HierarchicalModel(backbone, cfg.method, hierarchy)
    if cfg.pretrained and cfg.pretrained.lower() != "none":
        model.backbone.check_frontend(frontend)
        model.backbone.load_pretrained(cfg.pretrained, frontend, strict_frontend=False, warn=warn)
    return model


def predict_part(model: HierarchicalModel, part: SplitPart, store: RowStore, device: torch.device,
                 precision: str = "auto", batch_size: int = 32) -> dict:
    """The model's outputs on a part, as the arrays of a run's predictions file (float32 probabilities)."""
    out = infer(model, (x for x, *_ in batches(part, store, batch_size)), device, precision)
    result = {"keys": np.array(part.keys), "fine_probs": out.fine_probs, "coarse_probs": out.coarse_probs,
              "fine_targets": part.fine_targets, "fine_mask": part.fine_mask,
              "coarse_targets": part.coarse_targets, "coarse_mask": part.coarse_mask,
              "fine_names": np.array(model.hierarchy.fine_names),
              "coarse_names": np.array(model.hierarchy.coarse_names),
              "parent": np.array(model.hierarchy.parent)}  # coarse index of each fine tag
    if out.attention is not None:
        result["attention"] = out.attention.astype(np.float16)
    return result


def validation_losses(model, part: SplitPart, store: RowStore, device, precision: str = "auto",
                      batch_size: int = 32) -> tuple[dict, dict]:
    """The validation BCE per level of the saved (float32) probabilities, and the predictions."""
    pred = predict_part(model, part, store, device, precision, batch_size)
    return level_losses(pred["fine_probs"], pred["coarse_probs"], part), pred


def level_losses(fine_probs: np.ndarray, coarse_probs: np.ndarray, part: SplitPart) -> dict:
    """The validation BCE per level of one run's float32 probabilities on ``part`` (what picks the best epoch)."""
    return {"val_fine_loss": masked_bce(fine_probs, part.fine_targets, part.fine_mask),
            "val_coarse_loss": masked_bce(coarse_probs, part.coarse_targets, part.coarse_mask)}


def open_run(cfg: TrainConfig, resume: bool = False, force: bool = False) -> tuple[Run, dict | None]:
    """May ``cfg`` train in its folder? Returns (run, its summary if it already finished).

    Refuses a folder holding another configuration, and an unfinished run without ``resume``;
    ``force`` deletes the folder so the run starts again.
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
    return run, None


def train_run(cfg: TrainConfig, resume: bool = False, force: bool = False, console=None, progress: bool = True,
              data: TrainingData | None = None, stop_after_epoch: int | None = None) -> dict:
    """Train one (method, λ, seed) run into its folder. Returns the summary (done.json).

    The steps: open the run folder (``open_run``), build the model, restore from last.pt when resuming
    (``restore``), then per epoch ``train_epoch`` and ``validate_and_save``, and ``finish`` (the best
    checkpoint's predictions and done.json). ``stop_after_epoch`` simulates an interruption (for
    tests): it returns after that epoch, leaving the folder exactly as a killed run would.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    cfg = cfg.resolved()
    if cfg.protocol == "frozen":
        raise HmicError("train_run trains the fine-tuning protocol; frozen-protocol runs train through "
                        "hmic.training.frozen.train_frozen (or hmic.training.grid.run_grid, as 'hmic train --protocol frozen' does)")
    with cfg.run().exclusive():  # one writer per run folder, for the whole run
        return _train_locked(cfg, resume, force, console, progress, data, stop_after_epoch)


def _train_locked(cfg: TrainConfig, resume: bool, force: bool, console, progress: bool, data: TrainingData | None,
                  stop_after_epoch: int | None) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    run, done = open_run(cfg, resume, force)
    if done is not None:
        console.print(f"[green]✓[/] {run} already finished, skipping")
        return done
    run.folder.mkdir(parents=True, exist_ok=True)
    run.write_config(asdict(cfg))

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # weight init, dropout and SpecAugment draw from torch's generator
    data = data or load_training_data(cfg)
    record_training_data(run, cfg.data_dir, data)  # trained_on.json: reported by predict
    frontend = data.store.frontend  # the features' own front-end goes into the checkpoints
    # channels-last convolutions: faster on CUDA and ~1.5x faster on CPU (oneDNN) for CNN14.
    model = build_model(cfg, data.hierarchy, frontend, warn=lambda m: console.print(f"[yellow]{m}[/]"))
    model = model.to(device, memory_format=torch.channels_last)
    # CUDA: cuDNN picks its fastest kernels for the fixed input shape, and Adam runs as one fused kernel;
    # the CPU path stays as it was (its runs are bit-reproducible and equal those before this change).
    # a fixed backbone: learning rate 0 on every backbone parameter (lr_scale, applied in train_epoch)
    groups = ([{"params": list(model.backbone.parameters()), "lr_scale": 0.0},
               {"params": [p for n, p in model.named_parameters() if not n.startswith("backbone.")]}]
              if cfg.fixed_backbone else model.parameters())
    # fused Adam on CUDA, and for a fixed backbone (the frozen protocol's reference uses its kernel)
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 **({"fused": True} if device.type == "cuda" or cfg.fixed_backbone else {}))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    forward = torch.compile(model) if cfg.compile else model  # what trains (its state is model's)
    resident = ResidentPart.upload(data.parts["train"], data.store, device)
    steps_per_epoch = math.ceil(len(data.parts["train"].keys) / cfg.batch_size)
    if cfg.limit_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.limit_batches)
    start_epoch, best, history = 0, {"val_fine_loss": float("inf"), "epoch": -1}, []
    if resume and run.resumable:
        start_epoch, best, history = restore(run, model, optimizer, device)
        console.print(f"resuming {run} at epoch {start_epoch + 1}/{cfg.epochs}")
    else:
        run.clear_metrics()

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(f"{cfg.method} λ={cfg.lam:.2f} seed {cfg.seed}",
                            total=cfg.epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()

            def step_done(loss: float | None) -> None:
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs}" + (f" loss {loss:.4f}" if loss is not None else ""))

            train_loss, lr, split = train_epoch(model, optimizer, data, cfg, epoch, steps_per_epoch, device, step_done,
                                                resident, forward)
            best, improved, val = validate_and_save(run, model, lambda: resume_state(optimizer, device), data, cfg,
                                                    epoch, best, device,
                                                    {"epoch": epoch, "train_loss": train_loss, **split}, lr, t0, history)
            bar.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} val fine {val['val_fine_loss']:.4f}"
                                  f"{' (best)' if improved else ''}")
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return {"interrupted": True, "epoch": epoch}
    return finish(run, model, data, cfg, best, device)


def restore(run: Run, model: HierarchicalModel, optimizer: torch.optim.Optimizer,
            device: torch.device) -> tuple[int, dict, list[dict]]:
    """Model, optimiser and RNG states from last.pt, and metrics.jsonl rewritten from the history saved
    in it (last.pt is an epoch's commit point: a row appended after it, or lost by a kill before the
    append, comes back from it). Returns (the epoch to start at, the best record, the history)."""
    state = read_state(run.last_path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["training"]["optimizer"])
    torch.set_rng_state(state["training"]["rng"]["torch"])
    if device.type == "cuda" and state["training"]["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["training"]["rng"]["cuda"])
    start_epoch = state["epoch"] + 1
    return start_epoch, state["best"], restored_history(run, state, start_epoch)


def restored_history(run: Run, state: dict, start_epoch: int) -> list[dict]:
    """The metrics rows of a last.pt (``state``), with metrics.jsonl rewritten from them."""
    history = state["training"].get("history")
    if history is None:  # a last.pt from before checkpoints carried the history
        run.keep_metrics_before(start_epoch)
        history = run.metrics()
    else:  # the rows are last.pt's; the timings known only after its commit come from the file's rows
        written = {r["epoch"]: r for r in run.metrics()}
        history = [{**row, **{k: v for k, v in written.get(row["epoch"], {}).items() if k not in row}} for row in history]
        run.write_metrics(history)
    return list(history)


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
        model.embedding_dropout.rng = dropout_rng(cfg.seed, epoch)
    train, frontend = data.parts["train"], data.store.frontend
    order = torch.randperm(len(train.keys), generator=epoch_generator(cfg.seed, epoch)).numpy()
    aug_gen = epoch_generator(cfg.seed, epoch, AUGMENT_SEED_OFFSET)
    on_gpu = device.type == "cuda"
    if resident is not None and not cfg.augment.active:  # the augmentations draw on the host
        source = resident.batches(cfg.batch_size, order)
    else:
        source = batches(train, data.store, cfg.batch_size, order, pin=on_gpu)
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
                                              frontend.sample_rate / frontend.hop_length)
        x, ft, fm, ct, cm = (t.to(device, non_blocking=True) for t in (x, ft, fm, ct, cm))
        data_seconds += time.perf_counter() - fetch
        lr = lr_at(epoch * steps_per_epoch + i, steps_per_epoch, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with autocast(device, cfg.precision):
            out = (forward or model)(x)
        loss = hierarchical_loss(out, model.head, ft, fm, ct, cm, cfg.lam, cfg.alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double()
        n_batches += 1
        clips += len(x)
        if step_done is not None:
            step_done(None if on_gpu else total.item() / n_batches)
    if n_batches == 0:
        raise HmicError(f"epoch {epoch + 1} had no training batch: the train part of the split is empty "
                        f"({len(train.keys)} usable clips); check 'hmic split' and the features' failures.csv")
    mean_loss = total.item() / n_batches  # on CUDA: the epoch's one synchronisation
    split = {"data_seconds": round(data_seconds, 3),
             "compute_seconds": round(time.perf_counter() - started - data_seconds, 3), "train_clips": clips}
    return mean_loss, lr, split


def resume_state(optimizer: torch.optim.Optimizer, device: torch.device) -> dict:
    """What last.pt needs beyond the model to resume bit-exactly: the optimiser and the RNG states."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}
    return {"optimizer": optimizer.state_dict(), "rng": rng}


def validate_and_save(run: Run, model: HierarchicalModel, training_state, data: TrainingData,
                      cfg: TrainConfig, epoch: int, best: dict, device: torch.device, row: dict, lr: float,
                      started: float, history: list[dict], *, batch_size: int = 32,
                      embedding: dict | None = None, validated: tuple[dict, float] | None = None) -> tuple[dict, bool, dict]:
    """Validation losses, best.pt when the fine loss improved, then the epoch's commit: last.pt (what
    ``training_state()`` returns: the optimiser and RNG states, and every metrics row so far, this
    epoch's included), then the row appended to metrics.jsonl. Returns (the best record, whether it
    improved, the losses); ``history`` grows. ``embedding``: a frozen run's backbone (``hmic.models.checkpoint``);
    ``validated``: the losses and their seconds when computed already (a frozen stack validates all its
    runs at once)."""
    frontend, config = data.store.frontend, asdict(cfg)
    t_val = time.perf_counter()
    if validated is None:
        val, _ = validation_losses(model, data.parts["val"], data.store, device, cfg.precision, batch_size)
        val_seconds = time.perf_counter() - t_val
    else:
        val, val_seconds = validated
    t_save = time.perf_counter()
    row = {**row, **val, "lr": lr, "seconds": round(time.time() - started, 3),
           "validation_seconds": round(val_seconds, 6)}  # 6 places: a frozen run's share of its stack's pass
    improved = val["val_fine_loss"] < best["val_fine_loss"]
    if improved:
        best = {"val_fine_loss": val["val_fine_loss"], "epoch": epoch}
        save_checkpoint(run.best_path, model, frontend, config, epoch=epoch, best=best, embedding=embedding)
    # the time of this epoch's checkpoints is known only once they are written: it goes into the row of
    # metrics.jsonl (and the next epoch's history), while last.pt holds the row as it was at its commit
    history.append(dict(row))
    save_checkpoint(run.last_path, model, frontend, config, epoch=epoch, best=best, embedding=embedding,
                    training={**training_state(), "history": history})
    row["checkpoint_seconds"] = round(time.perf_counter() - t_save, 3)
    row["checkpoint_bytes"] = run.last_path.stat().st_size + (run.best_path.stat().st_size if improved else 0)
    if device.type == "cuda":
        row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    run.append_metrics(row)
    return best, improved, val


def finish(run: Run, model: HierarchicalModel, data: TrainingData, cfg: TrainConfig, best: dict,
           device: torch.device, batch_size: int = 32) -> dict:
    """The best checkpoint's predictions on validation and test, then done.json (the run's summary)."""
    model.load_state_dict(read_state(run.best_path)["model"])
    for name in ("val", "test"):
        run.write_predictions(name, predict_part(model, data.parts[name], data.store, device, cfg.precision, batch_size))
    summary = {"run": str(run), "method": cfg.method, "lambda": cfg.lam, "seed": cfg.seed,
               "best_epoch": best["epoch"], "best_val_fine_loss": best["val_fine_loss"],
               "epochs": cfg.epochs, "device": str(device), "protocol": cfg.protocol}
    run.write_done(summary)
    if not cfg.keep_last:  # last.pt exists to resume: a finished run keeps best.pt (README, "Where things go")
        run.last_path.unlink(missing_ok=True)
    return summary
