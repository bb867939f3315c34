"""The `hmic` command line: options, validation, and calls into the core package. No logic here."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import HmicError

app = typer.Typer(
    name="hmic",
    help="Hierarchical multi-label music instrument classification (CNN14 + hierarchical heads, OpenMIC-2018).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", envvar="HMIC_DATA_DIR", help="Root of an OpenMIC-layout folder [default: data/openmic-2018]."),
]
WorkDir = Annotated[
    Optional[Path],
    typer.Option("--work-dir", envvar="HMIC_WORK_DIR", help="Derived data (split, features) [default: <data-dir>.hmic]."),
]
HierarchyOpt = Annotated[
    Optional[Path], typer.Option("--hierarchy", help="Hierarchy YAML [default: hierarchy.yaml of hmic].")
]


class What(str, Enum):
    openmic = "openmic"
    cnn14 = "cnn14"
    all = "all"


@app.command()
def download(
    what: Annotated[What, typer.Argument(help="What to fetch.")] = What.all,
    data_dir: DataDir = None,
    checkpoint_dir: Annotated[Path, typer.Option(help="Where the CNN14 checkpoint goes.")] = Path("data/checkpoints"),
    downloads: Annotated[Path, typer.Option(help="Where archives are kept.")] = Path("data/downloads"),
    base_url: Annotated[
        Optional[str], typer.Option(envvar="HMIC_DOWNLOAD_BASE_URL", help="Mirror serving <base>/<filename>.")
    ] = None,
) -> None:
    """Fetch the OpenMIC-2018 archive and/or the CNN14 16 kHz checkpoint (resumable, MD5-checked)."""
    from . import download as dl
    from .dataset import resolve_data_dir

    if what in (What.openmic, What.all):
        dl.fetch_openmic(resolve_data_dir(data_dir), downloads, base_url, console=err)
    if what in (What.cnn14, What.all):
        dl.fetch_checkpoint(checkpoint_dir, base_url, console=err)


@app.command()
def split(
    data_dir: DataDir = None,
    work_dir: WorkDir = None,
    val_fraction: Annotated[float, typer.Option(help="Share of the official train partition used for validation.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the stratification.")] = 0,
    order: Annotated[int, typer.Option(help="Label-combination order of the iterative stratification.")] = 2,
    force: Annotated[bool, typer.Option(help="Replace an existing, different split.")] = False,
) -> None:
    """Carve a stratified validation set from the train partition; write train/val/test key lists."""
    from .dataset import OpenMIC, resolve_data_dir, resolve_work_dir
    from . import split as sp

    root = resolve_data_dir(data_dir)
    dataset = OpenMIC.load(root)
    result = sp.make_split(dataset, val_fraction, seed, order)
    folder = sp.save_split(result, sp.split_dir(resolve_work_dir(root, work_dir)),
                           sp.split_meta(dataset, val_fraction, seed, order), force=force)
    counts = sp.positives_table(dataset, result)
    table = Table(title=f"Observed positives / observed entries per tag (seed {seed})")
    table.add_column("tag")
    for part in sp.PARTS:
        table.add_column(f"{part} ({len(result.part(part))})", justify="right")
    table.add_column("val−train rate (pp)", justify="right")
    for tag in dataset.class_names:
        cells = [f"{counts[p][tag][0]} / {counts[p][tag][1]}" for p in sp.PARTS]
        rate = {p: counts[p][tag][0] / max(len(result.part(p)), 1) for p in ("train", "val")}
        table.add_row(tag, *cells, f"{100 * (rate['val'] - rate['train']):+.2f}")
    console.print(table)
    console.print(f"split written to {folder}/ (train.txt, val.txt, test.txt)")


@app.command()
def featurize(
    data_dir: DataDir = None,
    work_dir: WorkDir = None,
    workers: Annotated[int, typer.Option(help="Parallel processes.")] = max(1, os.cpu_count() or 1),
    clip_seconds: Annotated[float, typer.Option(help="Clip length the features are fitted to.")] = 10.0,
    force: Annotated[bool, typer.Option(help="Recompute a store made for another set of clips.")] = False,
) -> None:
    """Compute CNN14 log-mel features of every clip into a memory-mapped float16 store (resumable)."""
    from .audio import FrontendConfig
    from .dataset import OpenMIC, resolve_data_dir, resolve_work_dir
    from .features import featurize as run_featurize

    root = resolve_data_dir(data_dir)
    dataset = OpenMIC.load(root)
    keys = sorted(dataset.train_keys + dataset.test_keys)
    paths = [dataset.audio_path(k) for k in keys]
    cfg = FrontendConfig(clip_seconds=clip_seconds)
    s = run_featurize(keys, paths, resolve_work_dir(root, work_dir), cfg, workers=workers, force=force, console=err)
    table = Table(title=f"featurize → {s.folder}")
    for col in ("clips", "done now", "failed", "skipped (already done)", "time", "throughput"):
        table.add_column(col, justify="right")
    table.add_row(str(s.total), str(s.done), str(s.failed), str(s.skipped), f"{s.seconds:.1f} s", f"{s.clips_per_second:.1f} clips/s")
    console.print(table)
    if s.failed:
        console.print(f"[yellow]{s.failed} clips failed and are left out of training; see {s.folder / 'failures.csv'}[/]")


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} expects comma-separated numbers, got {text!r}") from None


@app.command()
def train(
    method: Annotated[str, typer.Option(help="Head: flat, levelwise, topdown, gap, lp, gmp, resatt (comma-separated for several).")] = "gmp",
    seeds: Annotated[Optional[int], typer.Option(help="Train seeds 0..N-1.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Train this one seed.")] = None,
    lam: Annotated[Optional[float], typer.Option("--lambda", help="Weight λ of the fine loss [default: 0.8].")] = None,
    lambdas: Annotated[Optional[str], typer.Option(help="Several λ, e.g. 0.7,0.75,0.8,0.85,0.9; the best by validation fine loss is recorded.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of TrainConfig fields (flags override it).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="cnn14, cnn14-light or cnn14-tiny [default: cnn14].")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="AudioSet CNN14 checkpoint or 'none' [default: data/checkpoints/Cnn14_16k_mAP=0.438.pth].")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs [default: 30]; the best validation epoch is kept.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size [default: 16].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate [default: 1e-4].")] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="Linear warm-up epochs [default: 5].")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="After warm-up: cosine or constant [default: cosine].")] = None,
    specaugment: Annotated[Optional[bool], typer.Option("--specaugment/--no-specaugment", help="PANNs SpecAugment [default: on].")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Weight of levelwise consistency items [default: 1.0].")] = None,
    coarse_rule: Annotated[Optional[str], typer.Option(help="Coarse targets: any or strict [default: any].")] = None,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Clip length of the features [default: 10].")] = None,
    data_dir: DataDir = None,
    work_dir: WorkDir = None,
    hierarchy: HierarchyOpt = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Where run folders go [default: runs].")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda [default: auto].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue interrupted runs from last.pt.")] = False,
    force: Annotated[bool, typer.Option(help="Restart runs that exist.")] = False,
) -> None:
    """Train CNN14 + a hierarchical head for each (method, λ, seed); keep the best validation epoch."""
    from dataclasses import replace

    from . import train as tr

    if seeds is not None and seed is not None:
        raise typer.BadParameter("give --seeds N or --seed S, not both")
    if lam is not None and lambdas is not None:
        raise typer.BadParameter("give --lambda or --lambdas, not both")
    base = tr.load_config_file(config) if config else {}
    flags = dict(arch=arch, pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr,
                 warmup_epochs=warmup_epochs, schedule=schedule, specaugment=specaugment, alpha=alpha,
                 coarse_rule=coarse_rule, clip_seconds=clip_seconds, device=device,
                 data_dir=str(data_dir) if data_dir else None, work_dir=str(work_dir) if work_dir else None,
                 hierarchy=str(hierarchy) if hierarchy else None, runs_dir=str(runs_dir) if runs_dir else None)
    base.update({k: v for k, v in flags.items() if v is not None})
    cfg0 = tr.TrainConfig(**base)
    seed_list = list(range(seeds)) if seeds is not None else [seed if seed is not None else cfg0.seed]
    lam_list = _floats(lambdas, "--lambdas") if lambdas else [lam if lam is not None else cfg0.lam]
    methods = [m.strip() for m in method.split(",") if m.strip()]
    for m in methods:
        tr.TrainConfig(**{**base, "method": m}).validate()
    data = None
    summaries = []
    for m in methods:
        for lam_value in ([1.0] if m == "flat" else lam_list):
            for s in seed_list:
                cfg = replace(cfg0, method=m, lam=lam_value, seed=s)
                data = data or tr.load_data(cfg)
                summaries.append(tr.train_run(cfg, resume=resume, force=force, console=err, data=data))
        if m != "flat":
            selection = tr.select_lambda(Path(cfg0.runs_dir), m)
            if len(lam_list) > 1:
                console.print(f"{m}: selected λ = {selection['selected_lambda']:.2f} (lowest mean validation fine loss)")
    table = Table(title="training runs")
    for col in ("run", "best epoch", "val fine loss", "device"):
        table.add_column(col)
    for s in summaries:
        table.add_row(s["run"], str(s["best_epoch"] + 1), f"{s['best_val_fine_loss']:.4f}", s.get("device", ""))
    console.print(table)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (never overwritten).")],
    clips: Annotated[int, typer.Option(help="Number of clips.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed: same seed and options give the same data.")] = 0,
    duration: Annotated[float, typer.Option(help="Clip length in seconds.")] = 10.0,
    label_noise: Annotated[float, typer.Option(help="Probability of flipping an observed label.")] = 0.0,
    soundfont: Annotated[Optional[Path], typer.Option(help="SF2/SF3 file [default: TimGM6mb.sf2 of pretty_midi].")] = None,
    workers: Annotated[int, typer.Option(help="Parallel rendering processes.")] = max(1, min(4, os.cpu_count() or 1)),
) -> None:
    """Render an OpenMIC-format stand-in dataset from a General MIDI SoundFont."""
    from .synth import SynthOptions, synthesize

    opts = SynthOptions(clips=clips, seed=seed, duration=duration, label_noise=label_noise,
                        soundfont=str(soundfont) if soundfont else "")
    summary = synthesize(out, opts, workers=workers, console=err)
    console.print(
        f"{summary['clips']} clips in {out}/ ({summary['train']} train / {summary['test']} test), "
        f"rendered in {summary['render_seconds']:.1f} s"
    )


def main() -> None:
    try:
        app()
    except HmicError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted; work done so far is kept, re-run the same command to resume[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
