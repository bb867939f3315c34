"""The data a run trains on: the split's parts read from the feature store, with fine and coarse targets.

``load_training_data(cfg)`` reads the dataset's labels, the split and the feature store once; runs
with the same ``data_key`` (``hmic.training.grid``) share it. ``batches`` reads log-mel batches from the
memory-mapped store in file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hmic.audio.decoding import FrontendConfig
from hmic.models.backbones import backbone_class
from hmic.training.config import TrainConfig
from hmic.data.openmic import OpenMIC, resolve_data_dir, resolve_work_dir
from hmic.data.features import FeatureStore
from hmic.data.store import RowStore
from hmic.data.hierarchy import Hierarchy, load_hierarchy
from hmic.data.split import PARTS, load_split, split_dir


@dataclass
class SplitPart:
    """The clips of one split part (train, val or test), with fine and coarse targets and masks."""

    keys: list[str]
    rows: np.ndarray  # (N,) rows of the feature store
    fine_targets: np.ndarray  # (N, F) float32
    fine_mask: np.ndarray  # (N, F) bool
    coarse_targets: np.ndarray  # (N, C) float32
    coarse_mask: np.ndarray  # (N, C) bool


@dataclass
class TrainingData:
    """The feature store, the hierarchy and the three parts of the split."""

    store: RowStore  # a FeatureStore (log-mel) or, frozen protocol, an EmbeddingStore
    hierarchy: Hierarchy
    parts: dict[str, SplitPart] = field(default_factory=dict)


def data_key(cfg: TrainConfig) -> tuple:
    """Runs with the same key read the same data (dataset, split, features or embeddings, hierarchy, targets)."""
    key = (cfg.data_dir, cfg.work_dir, cfg.hierarchy, cfg.coarse_rule, cfg.clip_seconds, cfg.arch)
    return key + ((cfg.pretrained, cfg.precision, cfg.device) if cfg.protocol == "frozen" else ())


def open_store(cfg: TrainConfig, work) -> RowStore:
    """What a run trains on: the log-mel features, or (frozen protocol) the embedding store of its backbone
    (``cfg.pretrained``) at the precision its device embeds in (``hmic.training.embed``)."""
    frontend = FrontendConfig(clip_seconds=cfg.clip_seconds, n_mels=backbone_class(cfg.arch).n_mels)
    if cfg.protocol != "frozen":
        return FeatureStore.open(work, frontend)
    from hmic.devices import resolve_device, resolve_precision
    from hmic.training.embed import open_embeddings

    precision = resolve_precision(resolve_device(cfg.device), cfg.precision)
    return open_embeddings(work, frontend, cfg.arch, cfg.pretrained, precision)


def hierarchy_of(cfg: TrainConfig) -> Hierarchy:
    """The hierarchy a run trains with (its --hierarchy over its dataset's tags), without the features."""
    return load_hierarchy(cfg.hierarchy or None, OpenMIC.load(resolve_data_dir(cfg.data_dir)).class_names)


def load_training_data(cfg: TrainConfig) -> TrainingData:
    root = resolve_data_dir(cfg.data_dir)
    dataset = OpenMIC.load(root)
    work = resolve_work_dir(root, cfg.work_dir or None)
    hierarchy = load_hierarchy(cfg.hierarchy or None, dataset.class_names)
    split = load_split(split_dir(work))
    store = open_store(cfg, work)
    data = TrainingData(store, hierarchy)
    for name in PARTS:
        keys = store.usable(split.part(name), name)
        labels = dataset.labels.subset(keys)
        ft, fm, ct, cm = hierarchy.targets(labels.targets, labels.mask, cfg.coarse_rule)
        data.parts[name] = SplitPart(keys, store.rows(keys), ft, fm, ct, cm)
    return data


def batches(part: SplitPart, store: RowStore, batch_size: int, order: np.ndarray | None = None, pin: bool = False):
    """Yield (logmel (B, T, M) float32, fine_t, fine_m, coarse_t, coarse_m, indices) from the memmap;
    ``pin``: in page-locked memory, so that the copy to a GPU runs asynchronously."""
    order = np.arange(len(part.keys)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = part.rows[idx]
        sort = np.argsort(rows)  # read the memmap in file order, then restore the batch order
        x = np.empty((len(rows),) + store.shape[1:], dtype=np.float32)
        x[sort] = store.data[rows[sort]]
        yield (torch.from_numpy(x).pin_memory() if pin else torch.from_numpy(x), torch.from_numpy(part.fine_targets[idx]), torch.from_numpy(part.fine_mask[idx]),
               torch.from_numpy(part.coarse_targets[idx]), torch.from_numpy(part.coarse_mask[idx]), idx)


RESIDENT_SHARE = 0.5  # a part's features go to the GPU when they take at most this share of its free memory


@dataclass
class ResidentPart:
    """A split part's features and targets on the GPU (float16 log-mel, as in the store), gathered into
    batches there: no host copy per step. OpenMIC's 20,000 clips are about 2.6 GB of float16."""

    logmel: torch.Tensor  # (N, T, M) float16, in the part's order
    fine_targets: torch.Tensor
    fine_mask: torch.Tensor
    coarse_targets: torch.Tensor
    coarse_mask: torch.Tensor

    @classmethod
    def upload(cls, part: SplitPart, store: FeatureStore, device: torch.device) -> "ResidentPart | None":
        """The part on ``device`` if it is a CUDA device with room for it, else None (batches then come
        from the memory-mapped store through pinned memory)."""
        if device.type != "cuda" or not len(part.keys):
            return None
        need = len(part.keys) * int(np.prod(store.shape[1:])) * 2
        free, _ = torch.cuda.mem_get_info(device)
        if need > RESIDENT_SHARE * free:
            return None
        order = np.argsort(part.rows)
        host = np.empty((len(part.keys),) + store.shape[1:], dtype=np.float16)
        host[order] = store.data[part.rows[order]]
        move = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        return cls(move(host), move(part.fine_targets), move(part.fine_mask), move(part.coarse_targets),
                   move(part.coarse_mask))

    def batches(self, batch_size: int, order: np.ndarray):
        """As ``batches``, gathered on the device (log-mel as float32)."""
        index = torch.from_numpy(order).to(self.logmel.device)
        for start in range(0, len(order), batch_size):
            idx = index[start:start + batch_size]
            yield (self.logmel.index_select(0, idx).float(), self.fine_targets[idx], self.fine_mask[idx],
                   self.coarse_targets[idx], self.coarse_mask[idx], idx)
