"""The grid of runs (methods × λ × seeds) and the executors that run it.

``plan_grid`` lists the runs; ``run_grid`` validates them all before anything starts and hands them to
an executor. ``LocalExecutor`` (the default) trains them one after another in this process, sharing
the loaded data. Another executor only needs ``run(configs, resume=, force=, console=)`` returning
one summary (done.json) per config, in order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from .heads import head_class
from .train import Data, TrainConfig, load_data, train_run


def plan_grid(base: TrainConfig, methods: list[str], lambdas: list[float], seeds: list[int]) -> list[TrainConfig]:
    """Every (method, λ, seed) run, in that nesting order; a head without coarse loss gets one λ."""
    configs = []
    for method in methods:
        for lam in head_class(method).lambdas_for(lambdas):
            for seed in seeds:
                configs.append(replace(base, method=method, lam=lam, seed=seed).resolved())
    return configs


class Executor(Protocol):
    def run(self, configs: list[TrainConfig], *, resume: bool, force: bool, console) -> list[dict]: ...


class LocalExecutor:
    """One run after another in this process; the dataset and features are loaded once per data set."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self._data: dict[tuple, Data] = {}

    def data_for(self, cfg: TrainConfig) -> Data:
        key = (cfg.data_dir, cfg.work_dir, cfg.hierarchy, cfg.coarse_rule, cfg.clip_seconds, cfg.arch)
        if key not in self._data:
            self._data[key] = load_data(cfg)
        return self._data[key]

    def run(self, configs: list[TrainConfig], *, resume: bool = False, force: bool = False, console=None) -> list[dict]:
        return [train_run(cfg, resume=resume, force=force, console=console, progress=self.progress,
                          data=self.data_for(cfg)) for cfg in configs]


def run_grid(configs: list[TrainConfig], executor: Executor | None = None, *, resume: bool = False,
             force: bool = False, console=None) -> list[dict]:
    """Train every configuration through ``executor`` (default: LocalExecutor); returns their summaries."""
    for cfg in configs:
        cfg.validate()
    return (executor or LocalExecutor()).run(configs, resume=resume, force=force, console=console)
