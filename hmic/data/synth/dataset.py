"""Writing the stand-in dataset: plans for every clip, rendering in parallel, OpenMIC-style labels,
partitions and metadata, in the OpenMIC-2018 layout (``hmic.data.openmic`` reads it like the real one)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hmic.data.openmic import (CLASS_MAP, LABELS_CSV, LABELS_HEADER, METADATA_CSV, OPENMIC_TAGS, TEST_PARTITION,
                       TRAIN_PARTITION, audio_relpath)
from hmic.errors import HmicError
from hmic.fileio import atomic_path, read_jsonl, trim_partial_line, write_csv, write_json, write_text
from hmic.data.synth.arrange import ENSEMBLES, ClipPlan, plan_clip, plan_variety
from hmic.data.synth.render import AUDIBLE_FLOOR_DB, SAMPLE_RATE, check_soundfont, default_soundfont, init_worker, mix_clip, worker_soundfont


def _render_job(job: tuple[ClipPlan, str]) -> tuple[str, dict[str, float]]:
    import soundfile as sf

    plan, out_path = job
    mix, levels = mix_clip(plan, worker_soundfont())
    out = Path(out_path)
    with atomic_path(out) as tmp:
        sf.write(tmp, mix, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    return plan.key, levels


@dataclass
class SynthOptions:
    clips: int = 2000
    seed: int = 0
    duration: float = 10.0
    label_noise: float = 0.0
    soundfonts: tuple[str, ...] = ()  # empty: TimGM6mb; several: each part drawn from them
    variety: bool = False  # per-stem and per-mix variety (arrange.plan_variety)
    test_fraction: float = 0.25
    observed_per_clip: float = 3.0

    def key(self) -> dict:
        return {**asdict(self), "soundfonts": list(self.soundfonts)}


def plan_dataset(opts: SynthOptions) -> list[ClipPlan]:
    """Deterministic plan of every clip: artists, their style, each clip's arrangement."""
    rng = np.random.default_rng([opts.seed, 0])
    n_artists = max(8, opts.clips // 10)
    styles = list(ENSEMBLES)
    artist_style = [str(rng.choice(styles)) for _ in range(n_artists)]
    plans = []
    used = set()
    for i in range(opts.clips):
        artist = int(rng.integers(n_artists))
        ensemble = artist_style[artist] if rng.random() < 0.7 else str(rng.choice(styles))
        while True:
            track = int(rng.integers(1, 160_000))
            key = f"{track:06d}_{int(rng.integers(0, 30)) * 1920}"
            if key not in used:
                used.add(key)
                break
        clip_rng = np.random.default_rng([opts.seed, 1, i])
        plan = plan_clip(clip_rng, key, artist, ensemble, opts.duration)
        if len(opts.soundfonts) > 1:  # separate streams: one font and no variety give the plans of before
            font_rng = np.random.default_rng([opts.seed, 3, i])
            for part in plan.parts:
                part.font = int(font_rng.integers(len(opts.soundfonts)))
        if opts.variety:
            plan_variety(np.random.default_rng([opts.seed, 4, i]), plan)
        plans.append(plan)
    return plans


def observe_labels(rng: np.random.Generator, present: set[str], label_noise: float, per_clip: float) -> list[tuple[str, float]]:
    """OpenMIC-style partial annotation: a few tags per clip, positives and plausible negatives."""
    absent = [t for t in OPENMIC_TAGS if t not in present]
    k = int(np.clip(rng.poisson(per_clip - 1) + 1, 1, 6))
    n_pos = min(len(present), int(rng.integers(0, k + 1))) if present else 0
    pos = list(rng.choice(sorted(present), size=n_pos, replace=False)) if n_pos else []
    neg = list(rng.choice(absent, size=min(len(absent), k - n_pos), replace=False)) if k > n_pos else []
    rows = []
    for tag, truth in [(t, True) for t in pos] + [(t, False) for t in neg]:
        label = truth if rng.random() >= label_noise else not truth
        confidence = float(rng.uniform(0.5, 1.0))
        rows.append((str(tag), round(0.5 + confidence / 2 if label else 0.5 - confidence / 2, 6)))
    rows.sort()
    return rows


def synthesize(out: Path, opts: SynthOptions, workers: int = 1, progress: bool = True, console=None) -> dict:
    """Render a dataset into ``out`` (OpenMIC-2018 layout); resumes an interrupted run of the same options."""
    from rich.console import Console
    from tqdm import tqdm

    console = console or Console(stderr=True)
    out = Path(out)
    if opts.clips < 1:
        raise HmicError("--clips must be at least 1")
    if not 1.0 <= opts.duration <= 600:
        raise HmicError(f"--duration must be between 1 and 600 seconds, got {opts.duration}")
    if not 0.0 <= opts.label_noise < 0.5:
        raise HmicError(f"--label-noise must be in [0, 0.5), got {opts.label_noise}")
    paths = [Path(f) for f in opts.soundfonts] or [default_soundfont()]
    soundfont = tuple(check_soundfont(f) for f in paths)
    opts_record = {**opts.key(), "soundfonts": [str(f) for f in paths], "soundfont_bytes": [len(f) for f in soundfont]}
    marker = out / "hmic-synth.json"
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise HmicError(f"{out} exists and is not an hmic synth folder; it is never overwritten. Choose another --out")
        previous = json.loads(marker.read_text())
        if previous.get("options") != opts_record:
            raise HmicError(
                f"{out} holds a dataset rendered with other options ({previous.get('options')}); "
                "it is never overwritten. Choose another --out or delete the folder"
            )
        if previous.get("complete"):
            console.print(f"[green]✓[/] {out} is already complete with these options, nothing to do")
            return previous
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"options": opts_record, "complete": False})

    t0 = time.time()
    plans = plan_dataset(opts)
    jobs = []
    for plan in plans:
        path = out / audio_relpath(plan.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((plan, str(path)))
    levels_path = out / "synth-levels.jsonl"
    done: dict[str, dict[str, float]] = {}
    if levels_path.exists():
        trim_partial_line(levels_path)  # a line cut by a kill
        for row in read_jsonl(levels_path):
            if (out / audio_relpath(row["key"])).exists():
                done[row["key"]] = row["levels"]
    todo = [j for j in jobs if j[0].key not in done]
    if done:
        console.print(f"resuming: {len(done)} clips already rendered, {len(todo)} to go")
    bar = tqdm(total=len(jobs), initial=len(done), desc="rendering clips", unit="clip", disable=not progress)
    with open(levels_path, "a") as log:
        def record(key: str, levels: dict) -> None:
            done[key] = levels
            log.write(json.dumps({"key": key, "levels": levels}) + "\n")
            log.flush()
            bar.update(1)

        if workers <= 1:
            init_worker(soundfont)
            for job in todo:
                record(*_render_job(job))
        else:
            with ProcessPoolExecutor(workers, initializer=init_worker, initargs=(soundfont,)) as pool:
                for key, levels in pool.map(_render_job, todo, chunksize=4):
                    record(key, levels)
    bar.close()
    render_s = time.time() - t0

    labels = build_labels(plans, done, opts)
    write_json(out / CLASS_MAP, {t: i for i, t in enumerate(OPENMIC_TAGS)})
    meta_rows = labels["metadata"]
    write_csv(out / LABELS_CSV, LABELS_HEADER, labels["labels"])
    write_csv(out / METADATA_CSV, list(meta_rows[0]), [list(r.values()) for r in meta_rows])
    write_csv(out / "synth-ground-truth.csv", ["sample_key", "instrument", "gm_program", "role", "gain_db", "level_db", "present"], labels["stems"])
    train, test = labels["train"], labels["test"]
    write_text(out / TRAIN_PARTITION, "\n".join(train) + "\n")
    write_text(out / TEST_PARTITION, "\n".join(test) + "\n")
    # "stand_in": what a run trained here reports (hmic.runs.trained_on); nothing behaves differently on it
    summary = {"options": opts_record, "complete": True, "stand_in": True, "clips": len(plans), "train": len(train), "test": len(test),
               "render_seconds": round(render_s, 2), "audible_floor_db": AUDIBLE_FLOOR_DB}
    write_json(marker, summary)
    return summary


def build_labels(plans: list[ClipPlan], levels: dict[str, dict[str, float]], opts: SynthOptions) -> dict:
    """Partitions (artist-disjoint), observed labels, metadata and stem ground truth from the plans
    and each stem's measured level in its mix."""
    label_rng = np.random.default_rng([opts.seed, 2])
    artists = sorted({p.artist for p in plans})
    order = label_rng.permutation(len(artists))
    n_test_artists = max(1, int(round(len(artists) * opts.test_fraction)))
    test_artists = {artists[i] for i in order[:n_test_artists]}
    label_rows, meta_rows, stem_rows = [], [], []
    for plan in plans:
        clip_levels = levels[plan.key]
        present = {t for t, lv in clip_levels.items() if lv >= AUDIBLE_FLOOR_DB}
        for tag, relevance in observe_labels(label_rng, present, opts.label_noise, opts.observed_per_clip):
            label_rows.append((plan.key, tag, relevance, 3))
        meta_rows.append({
            "sample_key": plan.key, "track_id": int(plan.key.split("_")[0]), "start_time": int(plan.key.split("_")[1]) / 1000,
            "artist_id": plan.artist, "ensemble": plan.ensemble, "tempo_bpm": round(plan.tempo, 2),
            "tonic": plan.tonic, "mode": plan.mode, "instruments": ";".join(sorted(present)),
            "license_title": "synthetic (hmic synth)", "license_url": "",
        })
        for part in plan.parts:
            stem_rows.append((plan.key, part.tag, part.program, part.role, round(part.gain_db, 3),
                              round(clip_levels.get(part.tag, float("-inf")), 3), int(part.tag in present)))
    return {"labels": label_rows, "metadata": meta_rows, "stems": stem_rows,
            "train": sorted(p.key for p in plans if p.artist not in test_artists),
            "test": sorted(p.key for p in plans if p.artist in test_artists)}
