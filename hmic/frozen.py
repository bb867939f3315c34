"""`hmic train --protocol frozen`: the head alone, trained on the embeddings ``hmic embed`` cached (README,
"The frozen-backbone protocol").

Every run keeps the fine-tuning protocol's loss, λ, seed, epochs, schedule, embedding dropout, best-epoch
rule and run folder; only the backbone is fixed, so that its output Z is read from the embedding store
instead of computed. Such runs are so small that one step costs less than Python's overhead around it,
so the runs that differ only in seed and λ train together as a *stack*: their heads' parameters stacked
along a first axis, one vmapped forward and backward and one Adam step for all of them per batch. Each
run still draws its own batches (its seed's order), its own dropout masks (its seed's stream) and its
own head initialisation, so a run trained in a stack equals the same run trained alone within float32
rounding (tests), and equals a fine-tuning run whose backbone is kept fixed (``fixed_backbone``) too.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack
from dataclasses import asdict

import numpy as np
import torch

from .config import TrainConfig
from .checkpoint import read_state
from .devices import resolve_device
from .errors import HmicError
from .heads import hierarchical_loss
from .model import HierarchicalModel, apply_keep, dropout_keep
from .train import (build_model, dropout_rng, epoch_generator, finish, lr_at, open_run, restored_history,
                    validate_and_save)
from .trainingdata import TrainingData, load_training_data

PREDICT_BATCH = 4096  # rows per head pass in validation and predictions (no backbone: memory is no concern)


def stack_key(cfg: TrainConfig) -> str:
    """Runs with the same key can train as one stack: everything but the seed and λ is the same."""
    identity = cfg.identity()
    for name in ("seed", "lam"):
        identity.pop(name)
    return json.dumps(identity, sort_keys=True)


def stacks_of(configs: list[TrainConfig]) -> list[list[int]]:
    """Indices into ``configs`` grouped by ``stack_key``, in order of first appearance."""
    stacks: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        stacks.setdefault(stack_key(cfg), []).append(i)
    return list(stacks.values())


def embedding_reference(store) -> dict:
    """What a frozen run's checkpoints say of the backbone they need (``hmic.checkpoint``)."""
    m = store.manifest
    return {"source": m["backbone"]["source"], "weights_digest": m["backbone"]["weights_digest"],
            "arch": m["backbone"]["arch"], "store": m["digest"], "precision": m["precision"]}


def train_frozen(configs: list[TrainConfig], *, resume: bool = False, force: bool = False, console=None,
                 progress: bool = True, data: TrainingData | None = None,
                 stop_after_epoch: int | None = None) -> list[dict]:
    """Train frozen-protocol runs, stacked where they can be; returns one summary (done.json) per config,
    in order. Finished runs are skipped; unfinished ones resume from last.pt with ``resume``."""
    from rich.console import Console

    console = console or Console(stderr=True)
    configs = [c.resolved() for c in configs]
    summaries: list[dict | None] = [None] * len(configs)
    with ExitStack() as locks:
        for cfg in configs:  # one writer per run folder, for the whole stack
            locks.enter_context(cfg.run().exclusive())
        todo = []
        for i, cfg in enumerate(configs):
            run, done = open_run(cfg, resume, force)
            if done is not None:
                console.print(f"[green]✓[/] {run} already finished, skipping")
                summaries[i] = done
            else:
                todo.append(i)
        for stack in stacks_of([configs[i] for i in todo]):
            members = [todo[j] for j in stack]
            stack_data = data or load_training_data(configs[members[0]])
            for i, summary in zip(members, _train_stack([configs[i] for i in members], resume, console, progress,
                                                        stack_data, stop_after_epoch)):
                summaries[i] = summary
    return summaries  # type: ignore[return-value]


class _Member:
    """One run of a stack: its folder, model (CachedEmbedding + head), best record and history."""

    def __init__(self, cfg: TrainConfig, model: HierarchicalModel):
        self.cfg, self.model, self.run = cfg, model, cfg.run()
        self.start_epoch, self.best, self.history = 0, {"val_fine_loss": float("inf"), "epoch": -1}, []
        self.adam: dict | None = None  # the head's Adam state from last.pt, by parameter name


def _train_stack(configs: list[TrainConfig], resume: bool, console, progress: bool, data: TrainingData,
                 stop_after_epoch: int | None) -> list[dict]:
    """Open, build and restore every run of one stack, then train its members that start at the same
    epoch together (after an interruption, runs can stand one epoch apart)."""
    device = resolve_device(configs[0].device)
    dim = int(data.store.shape[1])
    members = []
    for cfg in configs:
        member = _Member(cfg, build_model(cfg, data.hierarchy, data.store.frontend, embedding_dim=dim).to(device))
        member.run.folder.mkdir(parents=True, exist_ok=True)
        member.run.write_config(asdict(cfg))
        if resume and member.run.resumable:
            state = read_state(member.run.last_path)
            member.model.load_state_dict(state["model"])
            member.start_epoch, member.best = state["epoch"] + 1, state["best"]
            member.history = restored_history(member.run, state, member.start_epoch)
            member.adam = state["training"]["optimizer"]
            console.print(f"resuming {member.run} at epoch {member.start_epoch + 1}/{cfg.epochs}")
        else:
            member.run.clear_metrics()
        members.append(member)
    by_start: dict[int, list[_Member]] = {}
    for member in members:
        by_start.setdefault(member.start_epoch, []).append(member)
    results: dict[int, dict] = {}
    for start, group in sorted(by_start.items()):
        for member, summary in zip(group, _train_group(group, start, data, device, console, progress, stop_after_epoch)):
            results[id(member)] = summary
    return [results[id(m)] for m in members]


class Stack:
    """Heads of one method trained together: their parameters stacked along a first axis (the leaves
    that train), one Adam over them, and the train part's embeddings and targets on the device.
    ``step`` is one batch of every member: its own rows, its own dropout mask, one vmapped loss."""

    def __init__(self, heads: list[torch.nn.Module], lams: list[float], cfg: TrainConfig, z: torch.Tensor,
                 targets: list[torch.Tensor], device: torch.device):
        from torch.func import functional_call, vmap

        names = [n for n, _ in heads[0].named_parameters()]
        self.params = {n: torch.stack([dict(h.named_parameters())[n].detach() for h in heads]).clone().requires_grad_()
                       for n in names}
        # the fused Adam kernel, on CPU too: one pass over the stacked parameters instead of ten (resatt's
        # stack of 40 over 2,048-d embeddings: 80 → 8 ms a step); the same update within float rounding
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.z, self.targets, self.device, self.p = z, targets, device, cfg.embedding_dropout
        self.lams = torch.tensor(lams, dtype=torch.float32, device=device)
        base, buffers, alpha = heads[0], dict(heads[0].named_buffers()), cfg.alpha

        def member_loss(p, z, ft, fm, ct, cm, lam):
            return hierarchical_loss(functional_call(base, (p, buffers), (z,)), base, ft, fm, ct, cm, lam, alpha)

        self.losses_of = vmap(member_loss)

    def step(self, rows: np.ndarray, rngs: list[np.random.Generator], lr: float) -> torch.Tensor:
        """One optimiser step on ``rows`` (R, B) of the resident part; returns the R losses (detached)."""
        index = torch.from_numpy(rows).to(self.device)
        z = self.z[index]  # (R, B, D)
        if self.p > 0:  # each member's own mask stream, as its fixed-backbone run draws it
            keep = np.stack([dropout_keep(tuple(z.shape[1:]), self.p, rng) for rng in rngs])
            z = apply_keep(z, torch.from_numpy(keep).to(self.device), self.p)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        losses = self.losses_of(self.params, z, *(t[index] for t in self.targets), self.lams)
        self.optimizer.zero_grad(set_to_none=False)  # the gradient buffers are reused: no allocation per step
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()


def _restore_adam(stack: Stack, group: list[_Member], device: torch.device) -> None:
    """The members' Adam states from their last.pt, stacked like their parameters."""
    params, optimizer = stack.params, stack.optimizer
    if group[0].adam is not None:
        for n, p in params.items():
            states = [m.adam[n] for m in group]
            step_device = p.device  # fused Adam keeps its step count on the parameters' device
            optimizer.state[p] = {"step": torch.tensor(float(states[0]["step"]), dtype=torch.float32, device=step_device),
                                  "exp_avg": torch.stack([s["exp_avg"] for s in states]).to(device),
                                  "exp_avg_sq": torch.stack([s["exp_avg_sq"] for s in states]).to(device)}


def _member_adam(optimizer: torch.optim.Optimizer, params: dict, r: int) -> dict:
    """Member ``r``'s slice of the stack's Adam state (what its last.pt keeps), by parameter name."""
    out = {}
    for n, p in params.items():
        state = optimizer.state.get(p)
        if state:
            out[n] = {"step": float(state["step"]), "exp_avg": state["exp_avg"][r].detach().cpu().clone(),
                      "exp_avg_sq": state["exp_avg_sq"][r].detach().cpu().clone()}
    return out


def _train_group(group: list[_Member], start_epoch: int, data: TrainingData, device: torch.device, console,
                 progress: bool, stop_after_epoch: int | None) -> list[dict]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cfg0, n_runs = group[0].cfg, len(group)
    train = data.parts["train"]
    n_train = len(train.keys)
    if n_train == 0:
        raise HmicError(f"the train part of the split is empty ({n_train} usable clips); check 'hmic split' "
                        f"and the store's failures.csv ({data.store.folder})")
    steps_per_epoch = math.ceil(n_train / cfg0.batch_size)
    if cfg0.limit_batches:
        steps_per_epoch = min(steps_per_epoch, cfg0.limit_batches)
    # the train part's embeddings and targets, resident (OpenMIC: 15,000 × 2,048 float32, 120 MB)
    z_all = torch.from_numpy(np.ascontiguousarray(data.store.data[train.rows], dtype=np.float32)).to(device)
    targets = [torch.from_numpy(a).to(device) for a in (train.fine_targets, train.fine_mask, train.coarse_targets,
                                                         train.coarse_mask)]
    stack = Stack([m.model.head for m in group], [m.cfg.lam for m in group], cfg0, z_all, targets, device)
    _restore_adam(stack, group, device)
    params, optimizer = stack.params, stack.optimizer
    reference = embedding_reference(data.store)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    lam_text = ",".join(dict.fromkeys(f"{m.cfg.lam:.2f}" for m in group))
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(f"{cfg0.method} frozen λ={lam_text} × {n_runs} runs", total=cfg0.epochs * steps_per_epoch,
                            completed=start_epoch * steps_per_epoch, info="")
        for epoch in range(start_epoch, cfg0.epochs):
            t0 = time.time()
            orders = [torch.randperm(n_train, generator=epoch_generator(m.cfg.seed, epoch)).numpy() for m in group]
            rngs = [dropout_rng(m.cfg.seed, epoch) for m in group]
            total = torch.zeros(n_runs, dtype=torch.float64, device=device)
            n_batches, clips, data_seconds, lr = 0, 0, 0.0, cfg0.lr
            started = time.perf_counter()
            for i in range(steps_per_epoch):
                fetch = time.perf_counter()
                rows = np.stack([order[i * cfg0.batch_size:(i + 1) * cfg0.batch_size] for order in orders])
                if rows.shape[1] == 0:
                    break
                data_seconds += time.perf_counter() - fetch
                lr = lr_at(epoch * steps_per_epoch + i, steps_per_epoch, cfg0)
                total += stack.step(rows, rngs, lr).double()
                n_batches += 1
                clips += rows.shape[1]
                bar.update(task, advance=1)
            compute = time.perf_counter() - started - data_seconds
            mean = (total / max(1, n_batches)).tolist()
            best_losses = []
            for r, member in enumerate(group):
                with torch.no_grad():
                    for n, p in member.model.head.named_parameters():
                        p.copy_(params[n][r])
                row = {"epoch": epoch, "train_loss": mean[r], "data_seconds": round(data_seconds, 3),
                       "compute_seconds": round(compute, 3), "train_clips": clips, "stacked_runs": n_runs}
                member.best, _, val = validate_and_save(
                    member.run, member.model, lambda r=r: {"optimizer": _member_adam(optimizer, params, r), "rng": None},
                    data, member.cfg, epoch, member.best, device, row, lr, t0, member.history,
                    batch_size=PREDICT_BATCH, embedding=reference)
                best_losses.append(val["val_fine_loss"])
            bar.update(task, info=f"epoch {epoch + 1}/{cfg0.epochs} val fine {min(best_losses):.4f}–{max(best_losses):.4f}")
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return [{"interrupted": True, "epoch": epoch} for _ in group]
    return [finish(m.run, m.model, data, m.cfg, m.best, device, PREDICT_BATCH) for m in group]
