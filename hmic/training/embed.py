"""`hmic embed` and the embedding store that the frozen protocol trains on (docs/frozen.md).

What is cached, fixed: Z = ReLU(fc1(·)), the backbone's output as every head reads it in evaluation,
*before* the embedding dropout (which training applies after it: ``hmic.models.model.EmbeddingDropout``).

Layout (under the work dir, beside the features):

    embeddings/<store digest>/
        manifest.json     backbone (arch, weights digest, source file), front-end, precision, keys, shape
        z.f32             float32 (N, D), rows in the feature store's order, read through np.memmap
        done.u8           (N,) 1 once row i is written (flushed after the rows themselves)
        failures.csv      the feature store's failed clips, with their reasons (left out here too)

One store per (backbone weights, front-end, precision): its digest is of the weights' values (not the
file: tuned thresholds rewrite a checkpoint without changing its backbone). Rows are computed in fixed
chunks of rows, each committed whole (rows flushed, then their flags), so a killed ``hmic embed`` resumes
to the same store an uninterrupted one writes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmic.audio.decoding import FrontendConfig
from hmic.errors import HmicError
from hmic.models.loading import backbone_identity, load_backbone
from hmic.data.features import FeaturizeSummary, FeatureStore
from hmic.data.store import MANIFEST, RowStore, StoreWriter, write_failures

EMBEDDINGS = "z.f32"
POINT = "Z = ReLU(fc1(.)): the backbone's output as the heads read it in evaluation, before the embedding dropout"
CHUNK_ROWS = 32  # rows per committed chunk (and per forward pass)


class EmbeddingStore(RowStore):
    """Read-only view of an embedding store (float32 (N, D)); the same interface as ``FeatureStore``."""

    data_file = EMBEDDINGS
    dtype = np.float32
    command = "hmic embed"
    verb = "embedded"


def store_digest(weights: str, arch: str, frontend: FrontendConfig, precision: str) -> str:
    text = json.dumps({"weights": weights, "arch": arch, "frontend": frontend.digest(), "precision": precision},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def embeddings_dir(work_dir: Path, digest: str) -> Path:
    return Path(work_dir) / "embeddings" / digest


def open_embeddings(work_dir: Path, frontend: FrontendConfig, arch: str, source: str | Path, precision: str,
                    warn=None) -> EmbeddingStore:
    """The store of ``source``'s backbone over the features of ``frontend`` at ``precision`` (fp32 or bf16),
    or an error saying which 'hmic embed' makes it (and which stores exist)."""
    wanted = arch
    arch, path, digest = backbone_identity(arch, source, frontend, warn)
    if arch != wanted:
        raise HmicError(f"the backbone of {path} is {arch}, not --arch {wanted}; pass --arch {arch}")
    folder = embeddings_dir(work_dir, store_digest(digest, arch, frontend, precision))
    if not (folder / MANIFEST).exists():
        others = []
        for m in sorted((Path(work_dir) / "embeddings").glob(f"*/{MANIFEST}")):
            info = json.loads(m.read_text())
            others.append(f"{m.parent.name} ({info['backbone']['source']}, {info['precision']})")
        hint = f"; stores here: {', '.join(others)}" if others else ""
        raise HmicError(f"no embeddings of {path} ({arch}, {precision}) in {Path(work_dir) / 'embeddings'}"
                        f"{hint}; run 'hmic embed --pretrained {source} --precision {precision}' first")
    return EmbeddingStore(folder)


@dataclass
class EmbedSummary(FeaturizeSummary):
    """What ``embed`` did (as ``FeaturizeSummary``), and the precision it embedded in."""

    precision: str = "fp32"
    arch: str = "cnn14"  # the backbone's (an hmic run's own, whatever --arch said)


def embed(work_dir: Path, frontend: FrontendConfig, arch: str, source: str | Path, *, precision: str = "auto",
          device: str = "auto", force: bool = False, progress: bool = True, console=None,
          limit_chunks: int | None = None) -> EmbedSummary:
    """Compute Z for every clip of the feature store into the embedding store; resumes chunks already
    committed. ``limit_chunks`` stops after that many new chunks (used to test interruption)."""
    import torch
    from rich.console import Console
    from tqdm import tqdm

    from hmic.devices import autocast, resolve_device, resolve_precision
    from hmic.environment import require_torch_stack

    require_torch_stack()
    console = console or Console(stderr=True)
    features = FeatureStore.open(work_dir, frontend)
    pending = [k for k in features.keys if k not in features.failures and not features.done[features.index[k]]]
    if pending:
        raise HmicError(f"{len(pending)} clips (e.g. {pending[0]}) of {features.folder} are not featurized yet; "
                        "run 'hmic featurize' to finish before 'hmic embed'")
    dev = resolve_device(device)
    precision = resolve_precision(dev, precision)
    loaded = load_backbone(arch, source, frontend, warn=lambda m: console.print(f"[yellow]{m}[/]"))
    digest = store_digest(loaded.digest, loaded.arch, frontend, precision)
    dim = int(loaded.backbone.embedding_dim)
    n, shape = len(features.keys), (len(features.keys), dim)
    store = StoreWriter(embeddings_dir(work_dir, digest), "embeddings", EMBEDDINGS, np.float32, {
        "digest": digest, "point": POINT, "dtype": "float32", "shape": list(shape), "precision": precision,
        "backbone": {"arch": loaded.arch, "weights_digest": loaded.digest, "source": loaded.source},
        "frontend": frontend.to_dict(), "features": str(features.folder), "keys": list(features.keys)},
        same=lambda m: m["keys"] == features.keys and m["shape"] == list(shape), force=force,
        store_name="embedding store")
    folder, z, done = store.folder, store.data, store.done
    write_failures(folder, dict(features.failures))
    usable = np.array([k not in features.failures for k in features.keys])
    chunks = []
    for start in range(0, n, CHUNK_ROWS):
        rows = np.arange(start, min(n, start + CHUNK_ROWS))[usable[start:start + CHUNK_ROWS]]
        if len(rows) and not done[rows].all():
            chunks.append(rows)
    total_usable = int(usable.sum())
    skipped = total_usable - sum(len(r) for r in chunks)
    if limit_chunks is not None:
        chunks = chunks[:limit_chunks]
    # BatchNorm folded into the convolutions: the same function within float32 rounding, faster
    # (docs/measurements.md, "Tagging speed"); the store's rows equal the backbone's eval output to that rounding (tests)
    network = loaded.backbone.for_inference().to(dev, memory_format=torch.channels_last)
    t0 = time.time()
    n_done = 0
    bar = tqdm(total=total_usable, initial=skipped, desc=f"embedding ({precision})", unit="clip", disable=not progress)
    try:
        with torch.inference_mode():
            for rows in chunks:
                x = torch.from_numpy(features.data[rows].astype(np.float32)).to(dev)
                with autocast(dev, precision):
                    out = network(x)
                z[rows] = out.float().cpu().numpy()
                store.commit(rows)  # the chunk's rows first, then their flags: a kill in between recomputes it
                n_done += len(rows)
                bar.update(len(rows))
    except OSError as e:
        raise HmicError(f"embed stopped: {e.filename}: {e.strerror}. The chunks done so far are kept in {folder}; "
                        "fix the cause and run 'hmic embed' again to resume") from None
    finally:
        bar.close()
    store.close(usable, len(features.failures))
    return EmbedSummary(total_usable, n_done, len(features.failures), skipped, time.time() - t0, folder, precision,
                        loaded.arch)
