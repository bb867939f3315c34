"""`hmic train --protocol frozen`: the head alone, trained on the embeddings ``hmic embed`` cached (README,
"The frozen-backbone protocol").

Every run keeps the fine-tuning protocol's loss, λ, seed, epochs, schedule, embedding dropout, best-epoch
rule and run folder; only the backbone is fixed, so that its output Z is read from the embedding store
instead of computed. Such runs are so small that one step costs less than Python's overhead around it,
so the runs that differ only in seed and λ train together as a *stack*: their heads' parameters stacked
along a first axis, one forward and backward and one Adam step for all of them per batch (the heads and
the loss broadcast over stacked parameters, ``hmic.models.heads``). Each
run still draws its own batches (its seed's order), its own dropout masks (its seed's stream) and its
own head initialisation, so a run trained in a stack equals the same run trained alone within float32
rounding (tests), and equals a fine-tuning run whose backbone is kept fixed (``fixed_backbone``) too.

Runs of one seed draw the same batches and masks whatever their λ, so a stack of S seeds × L λ gathers
and masks S batches, not S·L, and each seed's L heads read their one batch (parameters (S, L, ...)
against the batches (S, 1, B, D)): the same arithmetic per run, fewer and larger operations.
"""

from __future__ import annotations

import functools
import json
import math
import time
from contextlib import ExitStack
from dataclasses import asdict

import numpy as np
import torch

from hmic.runs.provenance import record_training_data
from hmic.training.config import TrainConfig
from hmic.models.checkpoint import read_state
from hmic.devices import resolve_device
from hmic.errors import HmicError
from hmic.models.heads import hierarchical_loss
from hmic.models.model import HierarchicalModel, apply_keep, dropout_keep
from hmic.training.finetune import (build_model, dropout_rng, epoch_generator, finish, level_losses, lr_at, open_run,
                    restored_history, validate_and_save)
from hmic.training.data import TrainingData, load_training_data

PREDICT_BATCH = 4096  # rows per head pass in validation and predictions (no backbone: memory is no concern)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep large freed blocks for reuse instead of handing them back to the system.
    A stacked step allocates its gradients afresh (resatt's stack of 40 over 2,048-d embeddings: 46 MB
    for one weight), and by default glibc maps every block over 32 MB anew and returns it when freed,
    so each step paid the page faults of fresh memory: a third of resatt's step on a 2-core CPU (README,
    "The frozen-backbone protocol"). Process-wide and arithmetic-neutral; False where the C library has
    no ``mallopt`` (not glibc), and nothing changes there."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 31))


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
    """What a frozen run's checkpoints say of the backbone they need (``hmic.models.checkpoint``)."""
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
        record_training_data(member.run, cfg.data_dir, data)  # trained_on.json: reported by predict
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
    for member in sorted(members, key=lambda m: m.cfg.seed):  # seed by seed, as a Stack takes them
        by_start.setdefault(member.start_epoch, []).append(member)
    results: dict[int, dict] = {}
    for start, group in sorted(by_start.items()):
        for member, summary in zip(group, _train_group(group, start, data, device, console, progress, stop_after_epoch)):
            results[id(member)] = summary
    return [results[id(m)] for m in members]


class Stack:
    """Heads of one method trained together: their parameters stacked along a first axis (the leaves
    that train), one Adam over them, and the train part's embeddings and targets on the device.

    Members come seed by seed (``seeds`` sorted). When every seed has the same number L of members (a
    grid: S seeds × L λ), the stack has S *slots*, one per seed: a slot's batch and dropout mask are
    drawn once and read by its L heads (the parameters viewed (S, L, ...), the batches (S, 1, B, D)).
    Otherwise (runs resumed at different epochs, an uneven grid) each member is its own slot (L = 1).
    ``step`` is one batch of every slot: its own rows, its own dropout mask, one stacked loss; the heads
    and the loss broadcast over the stacked parameters (``hmic.models.heads``), so there is no per-run loop and
    no vmap (whose batching of the loss's many small operations cost the stack of 40 gmp heads a quarter
    of its step at 2,048-d: README, "The frozen-backbone protocol")."""

    def __init__(self, heads: list[torch.nn.Module], lams: list[float], seeds: list[int], cfg: TrainConfig,
                 z: torch.Tensor, targets: list[torch.Tensor], device: torch.device):
        if list(seeds) != sorted(seeds):
            raise ValueError("a stack's members come seed by seed (sorted by seed)")
        counts = [seeds.count(s) for s in dict.fromkeys(seeds)]
        self.per_slot = counts[0] if len(set(counts)) == 1 else 1
        self.slot_seeds = list(seeds[::self.per_slot])
        names = [n for n, _ in heads[0].named_parameters()]
        # matrices are stored transposed ((R, in, out) for a Linear's (out, in) weight): the weight gradient
        # of a product with Z then comes out in the stored layout and replaces the old one as it is, where
        # the head's own layout needed a strided copy the size of the weights (resatt at 2,048-d: 41 → 32 ms
        # a step); Adam is elementwise, so the layout changes nothing it computes
        self.transposed = {n for n, q in heads[0].named_parameters() if q.ndim == 2}
        self.params = {n: self.to_storage(n, torch.stack([dict(h.named_parameters())[n].detach() for h in heads]))
                       .clone().requires_grad_() for n in names}
        # the fused Adam kernel, on CPU too: one pass over the stacked parameters instead of ten (resatt's
        # stack of 40 over 2,048-d embeddings: 80 → 8 ms a step); the same update within float rounding
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.z, self.targets, self.device, self.p = z, targets, device, cfg.embedding_dropout
        # where freed memory is kept for reuse (CUDA's caching allocator, a CPU's tuned malloc), a step's
        # fresh gradients replace the old ones (no add into the old buffers); elsewhere the buffers are
        # reused, since allocating them costs more than adding
        self.reuse_grads = device.type == "cpu" and not keep_freed_memory()
        self.lams = torch.tensor(lams, dtype=torch.float32, device=device)
        self.base, self.buffers, self.alpha = heads[0], dict(heads[0].named_buffers()), cfg.alpha

    def to_storage(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A parameter (or its Adam state) stacked in the heads' layout (R, ...) → the stored layout."""
        return t.transpose(-1, -2).contiguous() if name in self.transposed else t

    def to_member(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The stored layout (stacked, or one member's slice) → the heads' layout (a view)."""
        return t.transpose(-1, -2) if name in self.transposed else t

    def member_params(self) -> dict[str, torch.Tensor]:
        """The stacked parameters in the heads' layout (R, ...), views of the leaves that train."""
        return {n: self.to_member(n, p) for n, p in self.params.items()}

    def slot_params(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The parameters and λ as the stacked loss reads them: (S, L, ...) views (L = 1 without shared slots)."""
        params = self.member_params()
        shape = (len(self.slot_seeds), self.per_slot)
        return {n: p.view(*shape, *p.shape[1:]) for n, p in params.items()}, self.lams.view(shape)

    def losses(self, z: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Every member's loss (S, L) on its slot's batch ``z`` (S, B, D) and ``targets`` (S, B, ...): the
        parameters (S, L, ...) against the batches (S, 1, B, ...), a slot's batch shared by its L heads."""
        from torch.func import functional_call

        params, lams = self.slot_params()
        out = functional_call(self.base, (params, self.buffers), (z[:, None],))
        return hierarchical_loss(out, self.base, *(t[:, None] for t in targets), lams, self.alpha)

    def step(self, rows: np.ndarray, rngs: list[np.random.Generator], lr: float) -> torch.Tensor:
        """One optimiser step on ``rows`` (S, B) of the resident part, one row of rows and one dropout
        stream per slot; returns the members' losses (R,), detached."""
        index = torch.from_numpy(rows).to(self.device)
        z = self.z[index]  # (S, B, D)
        if self.p > 0:  # each slot's own mask stream, as its runs' fixed-backbone references draw it
            keep = np.stack([dropout_keep(tuple(z.shape[1:]), self.p, rng) for rng in rngs])
            z = apply_keep(z, torch.from_numpy(keep).to(self.device), self.p)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        losses = self.losses(z, [t[index] for t in self.targets])
        self.optimizer.zero_grad(set_to_none=not self.reuse_grads)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach().reshape(-1)

    def probabilities(self, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Every member's fine (R, N, F) and coarse (R, N, C) probabilities on ``z`` (N, D), float32, the
        heads in eval mode: one stacked forward per ``PREDICT_BATCH`` rows instead of one pass per run."""
        from torch.func import functional_call

        def forward(params, z):
            out = functional_call(self.base, (params, self.buffers), (z,))
            return out.fine_probs.float(), out.coarse_probs.float()

        fine, coarse = [], []
        was_training = self.base.training
        self.base.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(z), PREDICT_BATCH):
                    f, c = forward(self.member_params(), z[start:start + PREDICT_BATCH])
                    fine.append(f.cpu())
                    coarse.append(c.cpu())
        finally:
            self.base.train(was_training)
        return torch.cat(fine, dim=1).numpy(), torch.cat(coarse, dim=1).numpy()

    def validation_losses(self, z: torch.Tensor, part) -> list[dict]:
        """Each member's validation BCE per level (``hmic.training.finetune.level_losses``, as a run alone computes
        it), from one stacked pass."""
        fine, coarse = self.probabilities(z)
        return [level_losses(fine[r], coarse[r], part) for r in range(len(fine))]


def _restore_adam(stack: Stack, group: list[_Member], device: torch.device) -> None:
    """The members' Adam states from their last.pt, stacked like their parameters."""
    params, optimizer = stack.params, stack.optimizer
    if group[0].adam is not None:
        for n, p in params.items():
            states = [m.adam[n] for m in group]
            step_device = p.device  # fused Adam keeps its step count on the parameters' device
            optimizer.state[p] = {"step": torch.tensor(float(states[0]["step"]), dtype=torch.float32, device=step_device),
                                  **{key: stack.to_storage(n, torch.stack([s[key] for s in states])).to(device)
                                     for key in ("exp_avg", "exp_avg_sq")}}


def _member_adam(stack: Stack, r: int) -> dict:
    """Member ``r``'s slice of the stack's Adam state in its head's layout (what its last.pt keeps), by
    parameter name."""
    out = {}
    for n, p in stack.params.items():
        state = stack.optimizer.state.get(p)
        if state:
            out[n] = {"step": float(state["step"]),
                      **{key: stack.to_member(n, state[key][r]).detach().cpu().contiguous().clone()
                         for key in ("exp_avg", "exp_avg_sq")}}
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
    stack = Stack([m.model.head for m in group], [m.cfg.lam for m in group], [m.cfg.seed for m in group], cfg0,
                  z_all, targets, device)
    _restore_adam(stack, group, device)
    params = stack.params
    z_val = torch.from_numpy(np.ascontiguousarray(data.store.data[data.parts["val"].rows], dtype=np.float32)).to(device)
    reference = embedding_reference(data.store)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    lam_text = ",".join(dict.fromkeys(f"{m.cfg.lam:.2f}" for m in group))
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(f"{cfg0.method} frozen λ={lam_text} × {n_runs} runs", total=cfg0.epochs * steps_per_epoch,
                            completed=start_epoch * steps_per_epoch, info="")
        for epoch in range(start_epoch, cfg0.epochs):
            t0 = time.time()
            # one batch order and one dropout stream per slot (per seed where a seed's runs share them)
            orders = [torch.randperm(n_train, generator=epoch_generator(s, epoch)).numpy() for s in stack.slot_seeds]
            rngs = [dropout_rng(s, epoch) for s in stack.slot_seeds]
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
            t_val = time.perf_counter()
            vals = stack.validation_losses(z_val, data.parts["val"])
            val_share = (time.perf_counter() - t_val) / n_runs  # each run's share of the stacked pass
            best_losses = []
            for r, member in enumerate(group):
                with torch.no_grad():
                    for n, p in member.model.head.named_parameters():
                        p.copy_(stack.to_member(n, params[n][r]))
                row = {"epoch": epoch, "train_loss": mean[r], "data_seconds": round(data_seconds, 3),
                       "compute_seconds": round(compute, 3), "train_clips": clips, "stacked_runs": n_runs}
                member.best, _, val = validate_and_save(
                    member.run, member.model, lambda r=r: {"optimizer": _member_adam(stack, r), "rng": None},
                    data, member.cfg, epoch, member.best, device, row, lr, t0, member.history,
                    batch_size=PREDICT_BATCH, embedding=reference, validated=(vals[r], val_share))
                best_losses.append(val["val_fine_loss"])
            bar.update(task, info=f"epoch {epoch + 1}/{cfg0.epochs} val fine {min(best_losses):.4f}–{max(best_losses):.4f}")
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return [{"interrupted": True, "epoch": epoch} for _ in group]
    return [finish(m.run, m.model, data, m.cfg, m.best, device, PREDICT_BATCH) for m in group]
