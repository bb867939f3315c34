"""The grid of runs (methods × λ, or level-weight vectors, × seeds) and the executors that run it.

``plan_grid`` lists the runs; ``run_grid`` validates them all before anything starts and hands them to
an executor. ``work_units`` groups them: a fine-tuning run is a unit; frozen-protocol runs that differ
only in seed and λ are one stack, trained together in one process (``hmic.training.frozen``); ``train_unit``
trains one. ``LocalExecutor`` (the default) trains the units one after another in this process, sharing
the loaded data; ``hmic.training.ray_engine.RayExecutor`` spreads them over a Ray cluster. An executor only
needs ``run(configs, resume=, force=, console=)`` returning one summary (done.json) per config, in
order, and raising ``GridError`` at the end when some runs failed while the others went on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from hmic.errors import HmicError
from hmic.models.heads import head_class
from hmic.training.config import TrainConfig
from hmic.training.frozen import stacks_of, train_frozen
from hmic.training.finetune import train_run
from hmic.training.data import TrainingData, data_key, load_training_data


class GridError(HmicError):
    """Some runs of a grid failed; the others finished. ``summaries`` holds one entry per config:
    its summary, or None where it failed; ``failures`` maps a run folder to its error."""

    def __init__(self, summaries: list[dict | None], failures: dict[str, str]):
        self.summaries, self.failures = summaries, failures
        lines = "; ".join(f"{run}: {error}" for run, error in failures.items())
        super().__init__(f"{len(failures)} of {len(summaries)} runs failed ({lines}); "
                         "fix the cause and run the same command again: finished runs are skipped")


def plan_grid(base: TrainConfig, methods: list[str], lambdas: list[float], seeds: list[int],
              level_weights: list[str] | None = None) -> list[TrainConfig]:
    """Every (method, λ, seed) run, in that nesting order; a head without coarse loss gets one λ.
    ``level_weights`` (vectors as --level-weights writes one, '0.2,0.3,0.5') replace the λ: every
    (method, vector, seed) run; a head without coarse loss ignores them and gets one run per seed."""
    configs = []
    for method in methods:
        if level_weights and any(level_weights):
            settings = [replace(base, method=method, level_weights=w) for w in level_weights]
        else:
            settings = [replace(base, method=method, lam=lam) for lam in head_class(method).lambdas_for(lambdas)]
        for setting in settings:
            for seed in seeds:
                cfg = replace(setting, seed=seed).resolved()
                if cfg not in configs:  # a head without coarse loss: one run whatever the vectors
                    configs.append(cfg)
    return configs


def check_hierarchies(configs: list[TrainConfig]) -> None:
    """Before any run starts: each run's hierarchy loads over its dataset's tags (a malformed file is one
    error, not one per run) and its --level-weights has one weight per level (``Hierarchy.check_level_weights``)."""
    from hmic.training.data import hierarchy_of

    seen: dict[tuple, object] = {}
    for cfg in configs:
        key = (cfg.data_dir, cfg.hierarchy)
        if key not in seen:
            seen[key] = hierarchy_of(cfg)
        if cfg.level_weights:
            seen[key].check_level_weights(cfg.level_weight_values)


class Executor(Protocol):
    def run(self, configs: list[TrainConfig], *, resume: bool, force: bool, console) -> list[dict]: ...


class LocalExecutor:
    """One run after another in this process; the dataset and features are loaded once per data set.
    A run that fails is reported and the next one starts."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self._data: dict[tuple, TrainingData] = {}

    def data_for(self, cfg: TrainConfig) -> TrainingData:
        key = data_key(cfg)
        if key not in self._data:
            self._data[key] = load_training_data(cfg)
        return self._data[key]

    def run(self, configs: list[TrainConfig], *, resume: bool = False, force: bool = False, console=None) -> list[dict]:
        summaries: list[dict | None] = [None] * len(configs)
        failures: dict[str, str] = {}
        for members in work_units(configs):  # a run, or a stack of frozen-protocol runs trained together
            try:
                done = train_unit([configs[i] for i in members], resume=resume, force=force, console=console,
                                  progress=self.progress, data=self.data_for(configs[members[0]]))
                for i, summary in zip(members, done):
                    summaries[i] = summary
            except Exception as e:  # one broken run must not stop the grid; KeyboardInterrupt still does
                text = str(e).splitlines()[0] if str(e) else type(e).__name__
                for i in members:
                    failures[str(configs[i].run())] = text
                if console is not None:
                    console.print(f"[red]✗ {', '.join(str(configs[i].run()) for i in members)}: {text}[/]", highlight=False,
                                  soft_wrap=True)
        if failures:
            raise GridError(summaries, failures)
        return summaries


def work_units(configs: list[TrainConfig]) -> list[list[int]]:
    """The grid as units of work, by index into ``configs``, in order: each fine-tuning run alone;
    frozen-protocol runs that can share a step (``hmic.training.frozen.stack_key``: the same but for seed and λ)
    as one stack."""
    frozen = [i for i, cfg in enumerate(configs) if cfg.protocol == "frozen"]
    units = [[i] for i, cfg in enumerate(configs) if cfg.protocol != "frozen"]
    units += [[frozen[j] for j in stack] for stack in stacks_of([configs[i] for i in frozen])]
    return sorted(units, key=lambda unit: unit[0])


def train_unit(configs: list[TrainConfig], *, resume: bool, force: bool, console=None, progress: bool = True,
               data: TrainingData | None = None) -> list[dict]:
    """Train one unit of ``work_units`` (what an executor runs at a time); its summaries, in order."""
    if configs[0].protocol == "frozen":
        return train_frozen(configs, resume=resume, force=force, console=console, progress=progress, data=data)
    return [train_run(configs[0], resume=resume, force=force, console=console, progress=progress, data=data)]


def run_grid(configs: list[TrainConfig], executor: Executor | None = None, *, resume: bool = False,
             force: bool = False, console=None) -> list[dict]:
    """Train every configuration through ``executor`` (default: LocalExecutor); returns their summaries."""
    for cfg in configs:
        cfg.validate()
    check_hierarchies(configs)
    return (executor or LocalExecutor()).run(configs, resume=resume, force=force, console=console)


def lambda_selections(configs: list[TrainConfig], summaries: list[dict]) -> list[dict]:
    """``select_lambda`` for each method of a finished grid trained at several λ, in the grid's order."""
    from pathlib import Path

    from hmic.runs.run import Run
    from hmic.runs.selection import select_lambda

    out = []
    for method in dict.fromkeys(c.method for c in configs):
        runs = [Run(Path(s["run"])) for s, c in zip(summaries, configs) if c.method == method]
        selection = select_lambda(runs)
        if len(selection["by_lambda"]) > 1:
            out.append(selection)
    return out
