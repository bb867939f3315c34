"""`hmic train`: the paper's protocol for one (method, λ, seed) run (README, "Methods" and "Project
choices"). The run's folder and files belong to ``hmic.runs.Run``; the grid of runs to ``hmic.grid``.

A killed run continues with ``resume=True`` from last.pt and ends bit-identical to an uninterrupted
one on CPU (model, optimiser, scheduler position and RNG states are all in the checkpoint).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .audio import FrontendConfig
from .backbones import BackboneConfig, backbone_class
from .checkpoint import read_state, save_checkpoint
from .dataset import OpenMIC, resolve_data_dir, resolve_work_dir
from .devices import autocast, resolve_device
from .errors import HmicError
from .features import FeatureStore
from .heads import hierarchical_loss
from .hierarchy import Hierarchy, load_hierarchy
from .inference import infer
from .augment import augment_batch
from .config import TrainConfig
from .model import HierarchicalTagger
from .runs import Run
from .split import load_split, split_dir

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


@dataclass
class Part:
    """The clips of one split part, with fine and coarse targets and masks."""

    keys: list[str]
    rows: np.ndarray
    fine_targets: np.ndarray
    fine_mask: np.ndarray
    coarse_targets: np.ndarray
    coarse_mask: np.ndarray


@dataclass
class Data:
    store: FeatureStore
    hierarchy: Hierarchy
    parts: dict[str, Part] = field(default_factory=dict)


def load_data(cfg: TrainConfig) -> Data:
    root = resolve_data_dir(cfg.data_dir)
    dataset = OpenMIC.load(root)
    work = resolve_work_dir(root, cfg.work_dir or None)
    hierarchy = load_hierarchy(cfg.hierarchy or None, dataset.class_names)
    split = load_split(split_dir(work))
    store = FeatureStore.open(work, FrontendConfig(clip_seconds=cfg.clip_seconds, n_mels=backbone_class(cfg.arch).n_mels))
    data = Data(store, hierarchy)
    for name in ("train", "val", "test"):
        keys = store.usable(split.part(name), name)
        labels = dataset.labels.subset(keys)
        ct, cm = hierarchy.coarse_targets(labels.targets, labels.mask, cfg.coarse_rule)
        data.parts[name] = Part(keys, store.rows(keys), labels.targets, labels.mask, ct, cm)
    return data


def batches(part: Part, store: FeatureStore, batch_size: int, order: np.ndarray | None = None):
    """Yield (logmel (B, T, M) float32, fine_t, fine_m, coarse_t, coarse_m, indices) from the memmap."""
    order = np.arange(len(part.keys)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = part.rows[idx]
        sort = np.argsort(rows)  # read the memmap in file order, then restore the batch order
        x = np.empty((len(rows),) + store.shape[1:], dtype=np.float32)
        x[sort] = store.data[rows[sort]]
        yield (torch.from_numpy(x), torch.from_numpy(part.fine_targets[idx]), torch.from_numpy(part.fine_mask[idx]),
               torch.from_numpy(part.coarse_targets[idx]), torch.from_numpy(part.coarse_mask[idx]), idx)


def build_model(cfg: TrainConfig, hierarchy: Hierarchy, frontend: FrontendConfig, console=None) -> HierarchicalTagger:
    backbone = BackboneConfig(cfg.arch, specaugment=cfg.specaugment, embedding_dropout=cfg.embedding_dropout)
    model = HierarchicalTagger(backbone, cfg.method, hierarchy)
    if cfg.pretrained and cfg.pretrained.lower() != "none":
        model.backbone.check_frontend(frontend)
        model.backbone.load_pretrained(cfg.pretrained, frontend, console)
    return model


def predict_part(model: HierarchicalTagger, part: Part, store: FeatureStore, device: torch.device,
                 precision: str = "auto", batch_size: int = 32) -> dict:
    """The model's outputs on a part, as the arrays of a run's predictions file (float32 probabilities)."""
    out = infer(model, (x for x, *_ in batches(part, store, batch_size)), device, precision)
    result = {"keys": np.array(part.keys), "fine_probs": out.fine_probs, "coarse_probs": out.coarse_probs,
              "fine_targets": part.fine_targets, "fine_mask": part.fine_mask,
              "coarse_targets": part.coarse_targets, "coarse_mask": part.coarse_mask,
              "fine_names": np.array(model.hierarchy.fine_names),
              "coarse_names": np.array(model.hierarchy.coarse_names)}
    if out.attention is not None:
        result["attention"] = out.attention.astype(np.float16)
    return result


def _bce_np(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    per = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    return float((per * mask).sum() / max(mask.sum(), 1))


def validation_losses(model, part: Part, store: FeatureStore, device, precision: str = "auto") -> tuple[dict, dict]:
    pred = predict_part(model, part, store, device, precision)
    return {"val_fine_loss": _bce_np(pred["fine_probs"], part.fine_targets, part.fine_mask),
            "val_coarse_loss": _bce_np(pred["coarse_probs"], part.coarse_targets, part.coarse_mask)}, pred


def open_run(cfg: TrainConfig, resume: bool = False, force: bool = False) -> tuple[Run, dict | None]:
    """May ``cfg`` train in its folder? Returns (run, its summary if it already finished).

    Refuses a folder holding another configuration, and an unfinished run without ``resume``;
    ``force`` deletes the folder so the run starts again.
    """
    cfg = cfg.resolved()
    run = Run.at(cfg.runs_dir, cfg.method, cfg.lam, cfg.seed)
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
              data: Data | None = None, stop_after_epoch: int | None = None) -> dict:
    """Train one (method, λ, seed) run into its folder. Returns the summary (done.json).

    ``stop_after_epoch`` simulates an interruption (for tests): it returns after that epoch, leaving
    the folder exactly as a killed run would.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    cfg = cfg.resolved()
    run, done = open_run(cfg, resume, force)
    if done is not None:
        console.print(f"[green]✓[/] {run} already finished, skipping")
        return done
    run.folder.mkdir(parents=True, exist_ok=True)
    run.write_config(asdict(cfg))

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # weight init, dropout and SpecAugment draw from torch's generator
    data = data or load_data(cfg)
    frontend = data.store.frontend  # the features' own front-end goes into the checkpoints
    # channels-last convolutions: faster on CUDA and ~1.5x faster on CPU (oneDNN) for CNN14.
    model = build_model(cfg, data.hierarchy, frontend, console).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = data.parts["train"]
    steps_per_epoch = math.ceil(len(train.keys) / cfg.batch_size)
    if cfg.limit_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.limit_batches)
    start_epoch, best = 0, {"val_fine_loss": float("inf"), "epoch": -1}
    if resume and run.resumable:
        state = read_state(run.last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["training"]["optimizer"])
        torch.set_rng_state(state["training"]["rng"]["torch"])
        if device.type == "cuda" and state["training"]["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["training"]["rng"]["cuda"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        run.keep_metrics_before(start_epoch)
        console.print(f"resuming {run} at epoch {start_epoch + 1}/{cfg.epochs}")
    else:
        run.clear_metrics()
    config = asdict(cfg)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(f"{cfg.method} λ={cfg.lam:.2f} seed {cfg.seed}",
                            total=cfg.epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0 = time.time()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(train.keys), generator=gen).numpy()
            total_loss, n_batches = 0.0, 0
            aug_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7_919)
            for i, (x, ft, fm, ct, cm, _) in enumerate(batches(train, data.store, cfg.batch_size, order)):
                if i >= steps_per_epoch:
                    break
                if cfg.augment.active:
                    x, ft, fm, ct, cm = augment_batch(x, ft, fm, ct, cm, cfg.augment, aug_gen,
                                                      frontend.sample_rate / frontend.hop_length)
                step = epoch * steps_per_epoch + i
                lr = lr_at(step, steps_per_epoch, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = x.to(device, non_blocking=True)
                with autocast(device, cfg.precision):
                    out = model(x)
                loss = hierarchical_loss(out, model.head, ft.to(device), fm.to(device), ct.to(device), cm.to(device),
                                         cfg.lam, cfg.alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item()
                n_batches += 1
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {total_loss / n_batches:.4f}")
            val, _ = validation_losses(model, data.parts["val"], data.store, device, cfg.precision)
            row = {"epoch": epoch, "train_loss": total_loss / max(n_batches, 1), **val, "lr": lr,
                   "seconds": round(time.time() - t0, 3)}
            improved = val["val_fine_loss"] < best["val_fine_loss"]
            if improved:
                best = {"val_fine_loss": val["val_fine_loss"], "epoch": epoch}
                save_checkpoint(run.best_path, model, frontend, config, epoch=epoch, best=best)
            rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}
            save_checkpoint(run.last_path, model, frontend, config, epoch=epoch, best=best,
                            training={"optimizer": optimizer.state_dict(), "rng": rng})
            run.append_metrics(row)
            bar.update(task, info=f"epoch {epoch + 1}/{cfg.epochs} val fine {val['val_fine_loss']:.4f}"
                                  f"{' (best)' if improved else ''}")
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return {"interrupted": True, "epoch": epoch}

    model.load_state_dict(read_state(run.best_path)["model"])
    for name in ("val", "test"):
        run.write_predictions(name, predict_part(model, data.parts[name], data.store, device, cfg.precision))
    summary = {"run": str(run), "method": cfg.method, "lambda": cfg.lam, "seed": cfg.seed,
               "best_epoch": best["epoch"], "best_val_fine_loss": best["val_fine_loss"],
               "epochs": cfg.epochs, "device": str(device)}
    run.write_done(summary)
    return summary
