"""The cross-file batch scheduler: windows of several files share each forward pass, and every file's
window outputs come back, in input order, as soon as its last window is through."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

import numpy as np

from hmic.models.inference import Outputs
from hmic.tagging.workers import Prepared


class Runner(Protocol):
    """Runs the model on one batch of prepared windows."""

    inputs: str  # "logmel": (B, T, M) log-mel; "wave": (B, clip_samples) 16-kHz waveforms
    backend: str
    precision: str

    def __call__(self, x: np.ndarray) -> Outputs: ...


@dataclass
class _Pending:
    prepared: Prepared
    taken: int = 0  # windows sent to the model
    outputs: list[Outputs] = field(default_factory=list)
    done: int = 0  # windows back from the model

    @property
    def windows(self) -> int:
        return 0 if self.prepared.inputs is None else len(self.prepared.inputs)


def run_batched(prepared: Iterable[Prepared], runner: Runner, batch_size: int) -> Iterator[tuple[Prepared, Outputs | None]]:
    """(file, its windows' outputs (W, ·)) for every prepared file, in order; outputs None for a file
    that failed to prepare (its ``error`` says why)."""
    pending: deque[_Pending] = deque()
    for p in prepared:
        pending.append(_Pending(p))
        while sum(x.windows - x.taken for x in pending) >= batch_size:
            _run_batch(pending, runner, batch_size)
        yield from _finished(pending)
    while any(x.windows > x.taken for x in pending):
        _run_batch(pending, runner, batch_size)
    yield from _finished(pending)


def _run_batch(pending: deque[_Pending], runner: Runner, batch_size: int) -> None:
    """One forward pass over the next ``batch_size`` windows, whichever files they come from."""
    parts, owners = [], []
    for p in pending:
        n = min(p.windows - p.taken, batch_size - sum(len(x) for x in parts))
        if n > 0:
            parts.append(p.prepared.inputs[p.taken:p.taken + n])
            owners.append((p, n))
            p.taken += n
    out = runner(np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0]))
    i = 0
    for p, n in owners:
        p.outputs.append(Outputs(out.fine_probs[i:i + n], out.coarse_probs[i:i + n],
                                 None if out.attention is None else out.attention[i:i + n],
                                 None if out.classes is None else out.classes[i:i + n]))
        p.done += n
        i += n
        if p.done == p.windows:
            p.prepared.inputs = None  # free it: the result needs only the outputs


def _finished(pending: deque[_Pending]) -> Iterator[tuple[Prepared, Outputs | None]]:
    while pending and (pending[0].prepared.error is not None or
                       (pending[0].done == len(pending[0].prepared.starts) and pending[0].done > 0)):
        p = pending.popleft()
        if p.prepared.error is not None:
            yield p.prepared, None
            continue
        outs = p.outputs
        attention = None if outs[0].attention is None else np.concatenate([o.attention for o in outs])
        classes = None if outs[0].classes is None else np.concatenate([o.classes for o in outs])
        yield p.prepared, Outputs(np.concatenate([o.fine_probs for o in outs]),
                                  np.concatenate([o.coarse_probs for o in outs]), attention, classes)
