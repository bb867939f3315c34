"""`hmic train --protocol frozen`: the head alone, trained on the embeddings ``hmic embed`` cached (docs/frozen.md).

Every run keeps the fine-tuning protocol's loss, λ, seed, epochs, schedule, embedding dropout, best-epoch
rule and run folder; only the backbone is fixed, so that its output Z is read from the embedding store
instead of computed. Such runs are so small that one step costs less than Python's overhead around it,
so the runs that differ only in seed and λ (or level weights) train together as a *stack*: their heads' parameters stacked
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

import json
import time
from contextlib import ExitStack

import numpy as np
import torch

from hmic.devices import freed_memory_kept, resolve_device
from hmic.models.heads import hierarchical_loss
from hmic.models.inference import infer
from hmic.models.model import apply_keep, dropout_keep
from hmic.runs.provenance import failures_recorded
from hmic.training.config import TrainConfig
from hmic.training.data import TrainingData, load_training_data
from hmic.training.finetune import build_model, open_run
from hmic.training.loop import RunState, dropout_rng, epoch_generator, level_losses, lr_at, train_epochs

PREDICT_BATCH = 4096  # rows per head pass in validation and predictions (no backbone: memory is no concern)


def stack_key(cfg: TrainConfig) -> str:
    """Runs with the same key can train as one stack: everything but the seed and λ (or the level weights)
    is the same. Runs with level weights stack apart from runs weighted by λ (whose depth-2 loss keeps the
    paper's arithmetic)."""
    identity = cfg.identity()
    for name in ("seed", "lam"):
        identity.pop(name)
    if identity.pop("level_weights", ""):
        identity["level_weights"] = True
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
        locks.enter_context(failures_recorded(*(cfg.run().folder for cfg in configs)))  # an error is kept in each run
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


def _train_stack(configs: list[TrainConfig], resume: bool, console, progress: bool, data: TrainingData,
                 stop_after_epoch: int | None) -> list[dict]:
    """Open, build and restore every run of one stack, then train its members that start at the same
    epoch together (after an interruption, runs can stand one epoch apart)."""
    device = resolve_device(configs[0].device)
    dim = int(data.store.shape[1])
    members, adam = [], {}
    for cfg in configs:
        member = RunState(cfg, build_model(cfg, data.hierarchy, data.store.frontend, embedding_dim=dim).to(device),
                          data.store.frontend)
        training = member.begin(resume, data, console)
        adam[id(member)] = training["optimizer"] if training is not None else None  # the head's, by parameter name
        members.append(member)
    by_start: dict[int, list[RunState]] = {}
    for member in sorted(members, key=lambda m: m.cfg.seed):  # seed by seed, as a Stack takes them
        by_start.setdefault(member.start_epoch, []).append(member)
    results: dict[int, dict] = {}
    for start, group in sorted(by_start.items()):
        trainer = StackedRuns(group, [adam[id(m)] for m in group], data, device)
        for member, summary in zip(group, train_epochs(trainer, data, device, start, console, progress,
                                                       stop_after_epoch)):
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
    and the loss broadcast over the stacked parameters (``hmic.models.heads``), so there is no per-run loop
    and no vmap."""

    def __init__(self, heads: list[torch.nn.Module], lams: list[float], seeds: list[int], cfg: TrainConfig,
                 z: torch.Tensor, targets: list[torch.Tensor], device: torch.device,
                 level_weights: list[tuple[float, ...]] | None = None):
        if list(seeds) != sorted(seeds):
            raise ValueError("a stack's members come seed by seed (sorted by seed)")
        counts = [seeds.count(s) for s in dict.fromkeys(seeds)]
        self.per_slot = counts[0] if len(set(counts)) == 1 else 1
        self.slot_seeds = list(seeds[::self.per_slot])
        names = [n for n, _ in heads[0].named_parameters()]
        # matrices are stored transposed ((R, in, out) for a Linear's (out, in) weight): the weight gradient
        # of a product with Z then comes out in the stored layout, with no strided copy the size of the
        # weights; Adam is elementwise, so the layout changes nothing it computes
        self.transposed = {n for n, q in heads[0].named_parameters() if q.ndim == 2}
        self.params = {n: self.to_storage(n, torch.stack([dict(h.named_parameters())[n].detach() for h in heads]))
                       .clone().requires_grad_() for n in names}
        # the fused Adam kernel, on CPU too: one pass over the stacked parameters instead of one per
        # parameter and state; the same update within float rounding
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.z, self.targets, self.device, self.p = z, targets, device, cfg.embedding_dropout
        # where freed memory is kept for reuse (CUDA's caching allocator, or a CPU process whose caller
        # opted in with hmic.devices.keep_freed_memory), a step's fresh gradients replace the old ones (no
        # add into the old buffers); elsewhere the buffers are reused, since allocating them costs more
        self.reuse_grads = device.type == "cpu" and not freed_memory_kept()
        self.lams = torch.tensor(lams, dtype=torch.float32, device=device)
        # one vector per member (R, levels) where the runs have --level-weights; None: their λ stand for them
        self.level_weights = (None if level_weights is None else
                              torch.tensor(level_weights, dtype=torch.float32, device=device))
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

    def slot_params(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The parameters, λ and level weights as the stacked loss reads them: (S, L, ...) views (L = 1
        without shared slots)."""
        params = self.member_params()
        shape = (len(self.slot_seeds), self.per_slot)
        weights = None if self.level_weights is None else self.level_weights.view(*shape, -1)
        return {n: p.view(*shape, *p.shape[1:]) for n, p in params.items()}, self.lams.view(shape), weights

    def losses(self, z: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """Every member's loss (S, L) on its slot's batch ``z`` (S, B, D) and ``targets`` (S, B, ...): the
        parameters (S, L, ...) against the batches (S, 1, B, ...), a slot's batch shared by its L heads."""
        from torch.func import functional_call

        params, lams, level_weights = self.slot_params()
        out = functional_call(self.base, (params, self.buffers), (z[:, None],))
        return hierarchical_loss(out, self.base, *(t[:, None] for t in targets), lams, self.alpha,
                                 level_weights=level_weights)

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
        heads in eval mode: one stacked forward per ``PREDICT_BATCH`` rows (``hmic.models.inference.infer``)."""
        was_training = self.base.training
        try:
            out = infer(_StackedForward(self), (z[i:i + PREDICT_BATCH] for i in range(0, len(z), PREDICT_BATCH)),
                        self.device, "fp32", batch_axis=1)
        finally:
            self.base.train(was_training)
        return out.fine_probs, out.coarse_probs

    def validation_losses(self, z: torch.Tensor, part, scores: bool = False) -> list[dict]:
        """Each member's validation BCE per level (``hmic.training.loop.level_losses``, as a run alone computes
        it; with ``scores``, its AUCs too), from one stacked pass."""
        fine, coarse = self.probabilities(z)
        return [level_losses(fine[r], coarse[r], part, scores) for r in range(len(fine))]


class _StackedForward(torch.nn.Module):
    """A stack's heads as one module for the inference loop: embeddings (N, D) → outputs (R, N, ...)."""

    def __init__(self, stack: Stack):
        super().__init__()
        self.stack, self.base = stack, stack.base

    def forward(self, z: torch.Tensor):
        from torch.func import functional_call

        return functional_call(self.base, (self.stack.member_params(), self.stack.buffers), (z,))


class StackedRuns:
    """Runs of one stack as ``hmic.training.loop`` trains them: a ``Stack`` over the train part's
    embeddings, resident on the device, and the members' own models (their heads receive the stack's
    parameters before each commit)."""

    predict_batch = PREDICT_BATCH

    def __init__(self, members: list[RunState], adam: list[dict | None], data: TrainingData, device: torch.device):
        cfg = members[0].cfg
        train = data.parts["train"]
        self.members, self.cfg, self.data, self.device = members, cfg, data, device
        # the train part's embeddings and targets, resident (OpenMIC: 15,000 × 2,048 float32, 120 MB)
        z = torch.from_numpy(np.ascontiguousarray(data.store.data[train.rows], dtype=np.float32)).to(device)
        targets = [torch.from_numpy(a).to(device) for a in (train.fine_targets, train.fine_mask, train.coarse_targets,
                                                             train.coarse_mask)]
        weighted = [m.cfg.level_weight_values for m in members]  # all set or none (stack_key)
        for weights in filter(None, weighted):
            data.hierarchy.check_level_weights(weights)
        self.stack = Stack([m.model.head for m in members], [m.cfg.lam for m in members],
                           [m.cfg.seed for m in members], cfg, z, targets, device,
                           level_weights=weighted if weighted[0] is not None else None)
        if adam[0] is not None:
            self._restore_adam(adam)
        self.z_val = torch.from_numpy(np.ascontiguousarray(data.store.data[data.parts["val"].rows],
                                                           dtype=np.float32)).to(device)
        self.embedding = embedding_reference(data.store)
        if cfg.level_weights:
            settings = "level weights " + " ".join(dict.fromkeys(m.cfg.level_weights for m in members))
        else:
            settings = "λ=" + ",".join(dict.fromkeys(f"{m.cfg.lam:.2f}" for m in members))
        self.description = f"{cfg.method} frozen {settings} × {len(members)} runs"

    def _restore_adam(self, states_by_member: list[dict]) -> None:
        """The members' Adam states from their last.pt, stacked like their parameters."""
        stack = self.stack
        for n, p in stack.params.items():
            states = [s[n] for s in states_by_member]
            step_device = p.device  # fused Adam keeps its step count on the parameters' device
            stack.optimizer.state[p] = {
                "step": torch.tensor(float(states[0]["step"]), dtype=torch.float32, device=step_device),
                **{key: stack.to_storage(n, torch.stack([s[key] for s in states])).to(self.device)
                   for key in ("exp_avg", "exp_avg_sq")}}

    def train_epoch(self, epoch: int, steps: int, step_done) -> tuple[list[float], float, dict]:
        stack, cfg, n_runs = self.stack, self.cfg, len(self.members)
        n_train = len(self.data.parts["train"].keys)
        # one batch order and one dropout stream per slot (per seed where a seed's runs share them)
        orders = [torch.randperm(n_train, generator=epoch_generator(s, epoch)).numpy() for s in stack.slot_seeds]
        rngs = [dropout_rng(s, epoch) for s in stack.slot_seeds]
        total = torch.zeros(n_runs, dtype=torch.float64, device=self.device)
        n_batches, clips, data_seconds, lr = 0, 0, 0.0, cfg.lr
        started = time.perf_counter()
        for i in range(steps):
            fetch = time.perf_counter()
            rows = np.stack([order[i * cfg.batch_size:(i + 1) * cfg.batch_size] for order in orders])
            if rows.shape[1] == 0:
                break
            data_seconds += time.perf_counter() - fetch
            lr = lr_at(epoch * steps + i, steps, cfg)
            total += stack.step(rows, rngs, lr).double()
            n_batches += 1
            clips += rows.shape[1]
            step_done(None)
        compute = time.perf_counter() - started - data_seconds
        shared = {"data_seconds": round(data_seconds, 3), "compute_seconds": round(compute, 3), "train_clips": clips,
                  "stacked_runs": n_runs}
        return (total / max(1, n_batches)).tolist(), lr, shared

    def validate(self) -> tuple[list[dict], float]:
        """Every member's validation losses from one stacked pass; each member's share of its seconds. The
        members' heads then hold the stack's parameters (what their commits save)."""
        t_val = time.perf_counter()
        vals = self.stack.validation_losses(self.z_val, self.data.parts["val"], scores=self.cfg.tracker != "none")
        share = (time.perf_counter() - t_val) / len(self.members)
        with torch.no_grad():
            for r, member in enumerate(self.members):
                for n, p in member.model.head.named_parameters():
                    p.copy_(self.stack.to_member(n, self.stack.params[n][r]))
        return vals, share

    def training_state(self, member: int) -> dict:
        """Member's slice of the stack's Adam state in its head's layout, by parameter name (its random
        streams are functions of its seed and epoch: nothing to keep)."""
        stack, out = self.stack, {}
        for n, p in stack.params.items():
            state = stack.optimizer.state.get(p)
            if state:
                out[n] = {"step": float(state["step"]),
                          **{key: stack.to_member(n, state[key][member]).detach().cpu().contiguous().clone()
                             for key in ("exp_avg", "exp_avg_sq")}}
        return {"optimizer": out, "rng": None}
