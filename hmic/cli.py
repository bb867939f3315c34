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
