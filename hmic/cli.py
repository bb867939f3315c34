"""The `hmic` command line: options, validation, and calls into the core package. No logic here."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager, suppress
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional, get_type_hints

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperGroup, TyperOption

from hmic.audio.decoding import FrontendConfig
from hmic.training.config import TRAIN_OPTIONS, TrainConfig, flag
from hmic.devices import DEVICE_HELP
from hmic.data.download import BASE_URL_ENV, CHECKPOINT_DIR, DOWNLOADS_DIR
from hmic.errors import HmicError
from hmic.evaluation.decision import DECISIONS, DEFAULT_DECISION
from hmic.tagging.tagger import DEFAULT_AGGREGATE, DEFAULT_BATCH_SIZE, DEFAULT_HOP_SECONDS


class Commands(TyperGroup):
    """hmic's commands; ``train`` is built when it is asked for (``_train_command``): its help lists the
    registered heads and backbones, and importing them imports torch, which ``hmic predict --backend
    onnx`` never needs. Listing the commands (``hmic --help``) builds it too."""

    # a lazily built command -> (the command it is listed after, the function that builds it)
    LAZY = {"train": ("embed", lambda: _train_command())}

    def list_commands(self, ctx) -> list[str]:
        names = [n for n in super().list_commands(ctx) if n not in self.LAZY]
        for name, (after, _) in self.LAZY.items():
            names.insert(names.index(after) + 1 if after in names else len(names), name)
        return names

    def get_command(self, ctx, name: str):
        if name in self.LAZY and name not in self.commands:
            from typer.main import get_command_from_info
            from typer.models import CommandInfo

            callback = self.LAZY[name][1]()
            self.commands[name] = get_command_from_info(CommandInfo(name=name, callback=callback), pretty_exceptions_short=True,
                                                        rich_markup_mode=getattr(self, "rich_markup_mode", "rich"))
        return super().get_command(ctx, name)


app = typer.Typer(
    name="hmic",
    help="Hierarchical multi-label music instrument classification (CNN14 + hierarchical heads, OpenMIC-2018).",
    cls=Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _flag_type(self, ctx):
    """A flag takes no value: no ``<bool>`` beside it (typer shows one for each, --help included)."""
    return None if self.is_flag else _typer_display_type(self, ctx)


_typer_display_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type


def _argument_usage(self) -> str:
    """An argument in the usage line as the docs write it: ``AUDIO...``, ``[RUNS]`` (typer's own: ``{audio}...``)."""
    name = self.display_name_raw.upper()
    return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")


TyperArgument._usage_display_name = _argument_usage
TyperArgument.display_type_rich = lambda self, ctx: None  # the name and help say what it is (not "<list[Path]>")


def _show_version(value: bool) -> None:
    if value:
        from hmic import __version__

        typer.echo(f"hmic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", help="Print hmic's version and exit.", is_eager=True,
                                                callback=_show_version)] = False) -> None:
    """Hierarchical multi-label music instrument classification (CNN14 + hierarchical heads, OpenMIC-2018)."""


def config_option(name: str, more_help: str = "", default_is_none: bool = True):
    """The ``hmic`` option of TrainConfig field ``name``, as an annotation: flag, help, environment
    variable and shown default all come from the field (``hmic.training.config.option``). ``default_is_none``:
    the parameter's default is None (the field's default is shown in the help only)."""
    f = next(f for f in TRAIN_OPTIONS if f.name == name)
    kind = Path if f.metadata.get("path") else get_type_hints(TrainConfig)[name]
    decls = [f"{flag(f)}/--no-{flag(f)[2:]}"] if kind is bool else [flag(f)]
    shown = f.metadata.get("show_default", str(f.default) if default_is_none else True)
    return Annotated[Optional[kind], typer.Option(*decls, help=" ".join(filter(None, (f.metadata["help"], more_help))),
                                                  envvar=f.metadata.get("envvar"), show_default=shown)]


DataDir = config_option("data_dir")
WorkDir = config_option("work_dir")
HierarchyOpt = config_option("hierarchy")


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class DownloadTarget(str, Enum):
    openmic = "openmic"
    cnn14 = "cnn14"
    all = "all"


@app.command()
def download(
    what: Annotated[DownloadTarget, typer.Argument(help="What to fetch.")] = DownloadTarget.all,
    data_dir: DataDir = None,
    checkpoint_dir: Annotated[Path, typer.Option(help="Where the CNN14 checkpoint goes.")] = Path(CHECKPOINT_DIR),
    downloads: Annotated[Path, typer.Option(help="Where archives are kept.")] = Path(DOWNLOADS_DIR),
    base_url: Annotated[
        Optional[str], typer.Option(envvar=BASE_URL_ENV, help="Mirror serving <base>/<filename>.")
    ] = None,
) -> None:
    """Fetch the OpenMIC-2018 archive and/or the CNN14 16 kHz checkpoint (resumable, MD5-checked)."""
    from hmic.data import download as dl
    from hmic.data.openmic import resolve_data_dir

    if what in (DownloadTarget.openmic, DownloadTarget.all):
        dl.fetch_openmic(resolve_data_dir(data_dir), downloads, base_url, console=err)
    if what in (DownloadTarget.cnn14, DownloadTarget.all):
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
    from hmic.data.openmic import OpenMIC, resolve_data_dir, resolve_work_dir
    from hmic.data import split as sp

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
    workers: Annotated[int, typer.Option(help="Parallel processes.", show_default="the number of CPUs")] = max(1, os.cpu_count() or 1),
    clip_seconds: Annotated[float, typer.Option(help="Clip length the features are fitted to.")] = FrontendConfig.clip_seconds,
    n_mels: Annotated[int, typer.Option(help="Mel bands (a backbone's own: every registered one takes 64).")] = FrontendConfig.n_mels,
    force: Annotated[bool, typer.Option(help="Recompute a store made for another set of clips.")] = False,
) -> None:
    """Compute CNN14 log-mel features of every clip into a memory-mapped float16 store (resumable)."""
    from hmic.environment import require_torch_stack

    require_torch_stack()
    from hmic.data.openmic import OpenMIC, resolve_data_dir, resolve_work_dir
    from hmic.data.features import featurize_dataset

    root = resolve_data_dir(data_dir)
    s = featurize_dataset(OpenMIC.load(root), resolve_work_dir(root, work_dir), FrontendConfig(clip_seconds=clip_seconds, n_mels=n_mels),
                          workers=workers, force=force, console=err)
    table = Table(title=f"featurize → {s.folder}")
    for col in ("clips", "done now", "failed", "skipped (already done)", "time", "throughput"):
        table.add_column(col, justify="right")
    table.add_row(str(s.total), str(s.done), str(s.failed), str(s.skipped), f"{s.seconds:.1f} s", f"{s.clips_per_second:.1f} clips/s")
    console.print(table)
    if s.failed:
        console.print(f"[yellow]{s.failed} clips failed and are left out of training; see {s.failures_path}[/]")


@app.command()
def embed(
    pretrained: Annotated[Optional[str], typer.Option(help="The backbone's weights: an AudioSet CNN14 file, an hmic run "
                                                           "folder or an hmic checkpoint.", show_default="the AudioSet CNN14 checkpoint "
                                                           "of 'hmic download cnn14'")] = None,
    run: Annotated[Optional[Path], typer.Option(help="Embed with this hmic run's backbone (the same as --pretrained RUN).",
                                                show_default=False)] = None,
    arch: Annotated[str, typer.Option(help="The backbone of an AudioSet file (an hmic run names its own).")] = "cnn14",
    data_dir: DataDir = None,
    work_dir: WorkDir = None,
    clip_seconds: Annotated[float, typer.Option(help="Clip length of the features.")] = FrontendConfig.clip_seconds,
    precision: Annotated[str, typer.Option(help="auto: bf16 where the device has it natively (CUDA, a CPU with "
                                                "avx512_bf16 or AMX), else fp32; or bf16, fp32.")] = "auto",
    device: Annotated[str, typer.Option(help=f"{DEVICE_HELP}.")] = "auto",
    force: Annotated[bool, typer.Option(help="Recompute a store made for another set of clips.")] = False,
) -> None:
    """Cache every clip's embedding Z (after fc1 and ReLU, before dropout) for --protocol frozen (resumable)."""
    from hmic.environment import require_torch_stack

    require_torch_stack()
    from hmic.models.backbones import backbone_class
    from hmic.data.openmic import resolve_data_dir, resolve_work_dir
    from hmic.data.download import default_checkpoint
    from hmic.training.embed import embed as embed_store

    if run is not None and pretrained is not None:
        raise typer.BadParameter("give --pretrained or --run, not both")
    source = str(run) if run is not None else (pretrained or str(default_checkpoint()))
    root = resolve_data_dir(data_dir)
    frontend = FrontendConfig(clip_seconds=clip_seconds, n_mels=backbone_class(arch).n_mels)
    s = embed_store(resolve_work_dir(root, work_dir), frontend, arch, source, precision=precision, device=device,
                    force=force, console=err)
    table = Table(title=f"embed → {s.folder}")
    for col in ("clips", "done now", "failed", "skipped (already done)", "precision", "time", "throughput"):
        table.add_column(col, justify="right")
    table.add_row(str(s.total), str(s.done), str(s.failed), str(s.skipped), s.precision, f"{s.seconds:.1f} s",
                  f"{s.clips_per_second:.1f} clips/s")
    console.print(table)
    hint = f"hmic train --protocol frozen --pretrained {source} --arch {s.arch} --precision {s.precision}"
    if data_dir is not None:
        hint += f" --data-dir {data_dir}"
    if run is not None:  # the hierarchy the backbone's run trained with, so that the heads learn the same tree
        from hmic.runs.run import Run

        hierarchy = Run(Path(run)).config().get("hierarchy") if (Path(run) / "config.json").is_file() else ""
        if hierarchy:
            hint += f" --hierarchy {hierarchy}"
    console.print(f"train on it: {hint}", highlight=False, soft_wrap=True)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} expects comma-separated numbers, got {text!r}") from None


def _train_options() -> list[inspect.Parameter]:
    """One option per TrainConfig field (``config_option``), the heads' and backbones' names in the help
    of --method and --arch (their registries import torch: hence the lazily built command)."""
    from hmic.models.backbones import BACKBONES
    from hmic.models.heads import describe_heads

    choices = {"heads": escape(describe_heads()) + ".", "backbones": ", ".join(BACKBONES.names()) + "."}
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                              default=(Path(f.default) if f.default else None) if f.metadata.get("path") else f.default,
                              annotation=config_option(f.name, choices.get(f.metadata.get("choices"), ""), False))
            for f in TRAIN_OPTIONS]


def _train_command():
    """The ``train`` command, built on first use (``Commands``): its option help names the registered
    heads and backbones, and its TrainConfig options are generated from the dataclass (``_train_options``)."""

    def train(
        ctx: typer.Context,
        seeds: Annotated[Optional[int], typer.Option(help="Train seeds 0..N-1 (instead of --seed).", show_default=False)] = None,
        lambdas: Annotated[Optional[str], typer.Option(help="Several λ, e.g. 0.7,0.75,0.8,0.85,0.9 (instead of --lambda); the best by validation fine loss is reported.", show_default=False)] = None,
        config: Annotated[Optional[Path], typer.Option(help="YAML file of TrainConfig fields; flags given on the command line override it.", show_default=False)] = None,
        resume: Annotated[bool, typer.Option(help="Continue interrupted runs from last.pt.")] = False,
        force: Annotated[bool, typer.Option(help="Restart runs that exist.")] = False,
        engine: Annotated[Engine, typer.Option(help="local: one run after another here; ray: one Ray task per run, over a cluster.")] = Engine.local,
        gpus_per_run: Annotated[Optional[float], typer.Option(help="Ray: GPUs per run; 0.25 packs four runs on a GPU.", show_default="1 where the cluster has GPUs, else 0")] = None,
        cpus_per_run: Annotated[float, typer.Option(help="Ray: CPUs per run (also its torch threads).")] = 1.0,
        ray_address: Annotated[Optional[str], typer.Option(help="Ray: join this cluster ('auto' or host:port).", show_default="a local Ray instance for the length of the command")] = None,
        **fields,
    ) -> None:
        """Train CNN14 + a hierarchical head for each (method, λ, seed); keep the best validation epoch."""
        from hmic.environment import require_torch_stack

        require_torch_stack()
        from hmic.training.grid import GridError, LocalExecutor, lambda_selections, plan_grid, run_grid
        from hmic.training.config import level_weights_grid, load_config_file

        def given(name: str) -> bool:
            source = ctx.get_parameter_source(name)  # click's ParameterSource (typer may vendor click)
            return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

        if seeds is not None and given("seed"):
            raise typer.BadParameter("give --seeds N or --seed S, not both")
        if lambdas is not None and given("lam"):
            raise typer.BadParameter("give --lambda or --lambdas, not both")
        values = load_config_file(config) if config else {}
        values.update({name: str(v) if isinstance(v, Path) else v for name, v in fields.items() if given(name)})
        base = TrainConfig(**values)
        if base.protocol == "frozen" and values.get("specaugment"):
            raise HmicError("--specaugment acts on the log-mel input, which a fixed backbone's cached embeddings no "
                            "longer have: drop it with --protocol frozen")
        seed_list = list(range(seeds)) if seeds is not None else [base.seed]
        lam_list = _floats(lambdas, "--lambdas") if lambdas else [base.lam]
        weights_list = level_weights_grid(base.level_weights)  # [''] without --level-weights
        if any(weights_list) and (lambdas is not None or given("lam")):
            raise typer.BadParameter("give --lambda/--lambdas or --level-weights, not both (level weights replace λ)")
        methods = [m.strip() for m in base.method.split(",") if m.strip()]
        configs = plan_grid(base, methods, lam_list, seed_list, weights_list)
        if base.protocol == "frozen":
            from hmic.devices import keep_freed_memory

            keep_freed_memory()  # the frozen stacks' allocator opt-in (process-wide; see its docstring)
        if engine == Engine.ray:
            from hmic.training.ray_engine import RayExecutor

            executor = RayExecutor(ray_address, gpus_per_run, cpus_per_run)
        else:
            if gpus_per_run is not None or ray_address is not None or given("cpus_per_run"):
                raise typer.BadParameter("--gpus-per-run, --cpus-per-run and --ray-address go with --engine ray")
            executor = LocalExecutor()
        failed: GridError | None = None
        try:
            summaries = run_grid(configs, executor, resume=resume, force=force, console=err)
        except GridError as e:
            failed, summaries = e, e.summaries
        if (len(lam_list) > 1 or len(weights_list) > 1) and failed is None:
            for selection in lambda_selections(configs, summaries):
                chosen = selection.get("selected_setting") or f"λ = {selection['selected_lambda']:.2f}"
                console.print(f"{selection['method']}: selected {chosen} (lowest mean validation fine loss)")
        table = Table(title="training runs")
        for col in ("run", "best epoch", "val fine loss", "device"):
            table.add_column(col)
        for c, s in zip(configs, summaries):
            if s is None:
                table.add_row(str(c.run()), "[red]failed[/]", failed.failures.get(str(c.run()), "")[:70] if failed else "", "")
            else:
                table.add_row(s["run"], str(s["best_epoch"] + 1), f"{s['best_val_fine_loss']:.4f}", s.get("device", ""))
        console.print(table)
        if failed is not None:
            raise failed

    ctx, *rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                  for name, p in inspect.signature(train, eval_str=True).parameters.items() if name != "fields"]
    train.__signature__ = inspect.Signature([ctx, *_train_options(), *rest])
    train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}
    return train


class ScoredSplit(str, Enum):
    val = "val"
    test = "test"


class Aggregation(str, Enum):
    max = "max"
    mean = "mean"


@app.command("tune-thresholds")
def tune_thresholds(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or folders holding runs).")],
) -> None:
    """Choose one threshold per tag (every node, at any depth) maximising F1 on the validation predictions."""
    from hmic.evaluation.scoring import tune_run
    from hmic.runs.run import find_runs

    for run in find_runs(runs):
        result = tune_run(run)
        note = "; ".join(f"{lv}: {', '.join(f'{t} ({why})' for t, why in tags.items())}"
                         for lv, tags in result["not_trained"].items() if tags)
        console.print(f"{run}: thresholds tuned on validation" + (f"; not trained, so never marked present by predict "
                                                                  f"(scored at 0.5 by evaluate): {note}" if note else ""),
                      highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (seeds) or folders holding runs.")],
    split: Annotated[ScoredSplit, typer.Option(help="Which part to score.")] = ScoredSplit.test,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write all figures to this JSON file.")] = None,
    per_tag: Annotated[bool, typer.Option(help="Also print per-tag values.")] = False,
) -> None:
    """Macro ROC-AUC, PR-AUC and F1 per level and depth (observed entries only); mean ± std over runs. Reads only.

    Both levels (fine = leaves, coarse = inner nodes) and, for a deeper hierarchy, each depth."""
    from hmic.evaluation.report import spread
    from hmic.evaluation.scoring import EVALUATION_VERSION, evaluate_runs
    from hmic.fileio import write_json
    from hmic.evaluation.metrics import METRIC_LABELS, METRICS
    from hmic.runs.run import LEVELS, find_runs

    found = find_runs(runs)
    _warn_mixed_code(found)
    agg = evaluate_runs(found, split.value)
    table = Table(title=f"{split.value} split, {len(found)} run(s), macro over tags (%)")
    table.add_column("level")
    for m in METRICS:
        table.add_column(METRIC_LABELS[m], justify="right")
    table.add_column("left out")
    for lv in LEVELS:
        table.add_row(lv, *[f"{100 * agg.mean[lv][m][0]:.2f} ± {spread(100 * agg.mean[lv][m][1], len(found), 2)}" for m in METRICS],
                      ", ".join(agg.left_out[lv]) or "-")
    if len(agg.levels) > 2:  # deeper than the paper's two levels: a row per depth as well (fine = the leaves)
        table.add_section()
        for d in agg.levels:
            table.add_row(f"depth {d['depth']} ({len(d['names'])})",
                          *[f"{100 * d['macro'][m][0]:.2f} ± {spread(100 * d['macro'][m][1], len(found), 2)}" for m in METRICS],
                          ", ".join(d["left_out"]) or "-")
    console.print(table)
    beyond = Table(title="beyond the paper: the hierarchy and calibration (mean ± std over runs)")
    beyond.add_column("measure")
    beyond.add_column("value", justify="right")
    for name, (m, sd) in agg.beyond.items():
        beyond.add_row(name.replace("_", " "), f"{m:.4f} ± {spread(sd, len(found), 4)}")
    console.print(beyond)
    if per_tag:
        for lv in LEVELS:
            t = Table(title=f"{lv} tags (mean over runs, %)")
            t.add_column("tag")
            for m in METRICS:
                t.add_column(METRIC_LABELS[m], justify="right")
            for tag, vals in agg.per_tag[lv].items():
                t.add_row(tag, *[f"{100 * vals[m]:.1f}" if vals[m] == vals[m] else "-" for m in METRICS])
            console.print(t)
    if json_out:
        write_json(json_out, {"format_version": EVALUATION_VERSION, "split": split.value, **agg.to_dict()})
        console.print(f"written {json_out}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two method folders (A B), or one runs folder compared against --reference.")],
    reference: Annotated[Optional[str], typer.Option(help="With one runs folder: the method every other is compared with (default: the paper's baseline, flat).", show_default=False)] = None,
    split: Annotated[ScoredSplit, typer.Option(help="Which part to score.")] = ScoredSplit.test,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of the test clips.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every comparison to this JSON file.")] = None,
) -> None:
    """Is a difference real? Paired by seed: mean difference, 95% CI and p-value per level and metric. Reads only."""
    from hmic.fileio import write_json
    from hmic.evaluation.metrics import METRIC_LABELS
    from hmic.evaluation.report import selected_runs
    from hmic.evaluation.significance import PROCEDURE, against_reference, compare as compare_runs

    if len(runs) == 2:
        (a_name, a), (b_name, b) = (next(iter(selected_runs(r).items())) for r in runs)
        results, corrected = {f"{a_name} − {b_name}": compare_runs(a, b, split.value, bootstrap, seed)}, False
    elif len(runs) == 1:
        groups = selected_runs(runs[0])
        if reference is None:
            from hmic.models.heads import BASELINE as reference
        results = {f"{m} − {reference}": d for m, d in against_reference(groups, reference, split.value, bootstrap, seed).items()}
        corrected = len(results) > 1
    else:
        raise typer.BadParameter("give two method folders, or one runs folder (with --reference)")
    for title, diffs in results.items():
        t = Table(title=f"{title} ({split.value} split, {diffs[0].pairs} seed pair(s), percentage points)")
        for col in ("level", "metric", "difference", "95% CI", "p") + (("p (Holm)",) if corrected else ()) + ("",):
            t.add_column(col, justify="left" if col in ("level", "metric") else "right")
        for d in diffs:
            mark = ("[dim]— (one seed pair: no test)[/]" if d.pairs < 2 else
                    ("[green]better[/]" if d.mean > 0 else "[red]worse[/]") if d.significant() else "[dim]n.s.[/]")
            t.add_row(d.level, METRIC_LABELS[d.metric], f"{100 * d.mean:+.2f}", f"[{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]",
                      f"{d.p_value:.3f}", *((f"{d.p_holm:.3f}",) if corrected else ()), mark)
        console.print(t)
    console.print(f"procedure: {PROCEDURE}; {bootstrap} bootstrap resamples (seed {seed})"
                  + ("; p-values Holm-corrected over the methods, per level and metric" if corrected else ""), soft_wrap=True)
    if json_out:
        write_json(json_out, {"procedure": PROCEDURE, "bootstrap": bootstrap, "seed": seed, "split": split.value,
                              "comparisons": {k: [d.to_dict() for d in v] for k, v in results.items()}})
        console.print(f"written {json_out}")


class Backend(str, Enum):
    torch = "torch"
    onnx = "onnx"


Decision = Enum("Decision", {d.replace("-", "_"): d for d in DECISIONS}, type=str)  # hmic.evaluation.decision


TABLES_UP_TO = 20  # files: above this, tables are printed only with --tables
SKIPPED_SHOWN = 3  # skipped folder entries named before "and N more"


@app.command()
def predict(
    audio: Annotated[list[Path], typer.Argument(help="Audio files or folders (any length, any format soundfile reads).")],
    run: Annotated[Optional[Path], typer.Option(help="Run folder or checkpoint (with --backend onnx: a file from 'hmic export --onnx').", show_default="the latest run with tuned thresholds")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where to look for the latest run.")] = Path("runs"),
    hop: Annotated[float, typer.Option(help="Hop between 10-s windows, seconds.")] = DEFAULT_HOP_SECONDS,
    aggregate: Annotated[Aggregation, typer.Option(help="Song-level aggregation of window probabilities.")] = Aggregation(DEFAULT_AGGREGATE),
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass (windows of several files share a batch).")] = DEFAULT_BATCH_SIZE,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write this run's results as JSON (schema: docs, 'Tagging songs and libraries').")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Write this run's results as CSV.")] = None,
    jsonl: Annotated[Optional[Path], typer.Option(help="Append one JSON line per finished file; files already in it are skipped, so a killed run resumes.", show_default=False)] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Write a label track per file here (start, end, label; tab-separated: Audacity, Sonic Visualiser).", show_default=False)] = None,
    segments: Annotated[bool, typer.Option(help="Print (and keep in JSON) the per-window timeline.")] = False,
    explain: Annotated[bool, typer.Option(help="Show which fine tags carried each present coarse tag.")] = False,
    tables: Annotated[Optional[bool], typer.Option(help="Print a table per file.", show_default=f"for up to {TABLES_UP_TO} files")] = None,
    device: Annotated[str, typer.Option(help=f"{DEVICE_HELP}.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto: bf16 where the device has it natively (CUDA, a CPU with avx512_bf16 or AMX), else fp32; or bf16, fp32. The head is float32 always.")] = "auto",
    backend: Annotated[Backend, typer.Option(help=escape("torch, or onnx (onnxruntime; pip install 'hmic[onnx]')."))] = Backend.torch,
    workers: Annotated[Optional[int], typer.Option(help="Processes decoding and resampling ahead of the model (0: in this process).", show_default="0 for one file, else min(4, CPUs/2)")] = None,
    truth: Annotated[Optional[Path], typer.Option(help="A song's ground truth (.truth.json from 'hmic synth-song'): print found, missed and false tags, per section too.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(help="'audioset': tag with the AudioSet classifier of PANNs' CNN14 checkpoint, no training needed (docs/audioset-model.md); with --run, that audioset run's tuned thresholds.", show_default=False)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="--model audioset: the AudioSet CNN14 file.", show_default="where 'hmic download cnn14' puts it")] = None,
    audioset_map: Annotated[Optional[Path], typer.Option(help="--model audioset: which AudioSet classes each fine tag is the max of (YAML).", show_default="the openmic_audioset.yaml shipped with hmic")] = None,
    hierarchy: Annotated[Optional[Path], typer.Option(help="--model audioset: the hierarchy to tag with.", show_default="the hierarchy.yaml shipped with hmic")] = None,
    decision: Annotated[Decision, typer.Option(help="How marks follow the hierarchy: any-child (a coarse tag is present exactly when one of its fine tags is), under-parent (a fine tag only under a present coarse tag), or independent (the paper's per-level thresholds; marks can contradict). docs/reading-predictions.md.")] = Decision(DEFAULT_DECISION),
) -> None:
    """Tag songs of any length, or whole libraries, with fine and coarse instrument tags."""
    from hmic.tagging import FileTagger, plan_tagging, run_tagging
    from hmic.tagging.library import producer

    from hmic.tagging.choice import choose_model

    run, model = choose_model(run, runs_dir, model, checkpoint, audioset_map, hierarchy,
                              say=lambda m: err.print(m, highlight=False, soft_wrap=True))
    if run is None:  # model == "audioset": the AudioSet classifier, no run folder
        if backend is Backend.onnx:
            raise HmicError("--model audioset runs over PyTorch; for --backend onnx export an audioset run "
                            "('hmic train --method audioset --epochs 0', then 'hmic export')")
        from hmic.data.hierarchy import load_hierarchy

        tagger = FileTagger.audioset(checkpoint, audioset_map, load_hierarchy(hierarchy) if hierarchy else None,
                                     device, precision, warn=lambda m: err.print(f"[yellow]{escape(m)}[/]"))
    elif backend is Backend.onnx:
        from hmic.tagging.onnxrun import load_onnx_tagger

        tagger = load_onnx_tagger(run, device, precision)
    else:
        tagger = FileTagger.load(run, device, precision)
    if model is not None and tagger.method != model:
        raise HmicError(f"--model audioset with --run: {run} is a {tagger.method} run, not an audioset run")
    tagger.decision = decision.value
    plan = plan_tagging(audio, jsonl, truth, labels, producer(tagger, hop, aggregate.value))
    _print_model(tagger)
    if plan.not_audio:
        shown = ", ".join(plan.skipped[:SKIPPED_SHOWN]) + (f" and {plan.not_audio - SKIPPED_SHOWN} more"
                                                             if plan.not_audio > SKIPPED_SHOWN else "")
        err.print(f"{plan.not_audio} folder {'entry' if plan.not_audio == 1 else 'entries'} without an audio suffix left out: "
                  f"{shown}", highlight=False, soft_wrap=True)
    if plan.already_done:
        err.print(f"{jsonl}: {plan.already_done} file(s) already tagged there are skipped", highlight=False, soft_wrap=True)
    show = tables if tables is not None else plan.found <= TABLES_UP_TO
    # without tables and without an output file, each file still gets one line (never silence)
    summaries = not show and not any(x is not None for x in (json_out, csv_out, jsonl, labels))
    for entry in plan.unreadable:
        _print_failure(entry["error"])
    with _file_progress(len(plan.files)) as advance:
        def on_file(path: str, result: dict | None, error: str | None) -> None:
            advance()
            if error is not None:
                _print_failure(error)
            elif show:
                _print_song(result, segments, explain)
                if truth is not None:
                    _print_comparison(result["truth_comparison"], truth)
            elif summaries:
                _print_summary(result)

        report = run_tagging(tagger, plan, hop_seconds=hop, aggregate=aggregate.value, batch_size=batch_size,
                             workers=workers, labels=labels, segments=segments, json_out=json_out, csv_out=csv_out,
                             on_file=on_file)
    if labels is not None and report.results:
        err.print(f"label tracks: {labels}/", highlight=False, soft_wrap=True)
    if report.failures or plan.found > 1:
        err.print(f"{len(report.results)} file(s) tagged, {len(report.failures)} failed"
                  + (f", {plan.already_done} already in {jsonl}" if jsonl is not None else ""), highlight=False, soft_wrap=True)
    if report.failures and not report.results:
        raise typer.Exit(1)


def _print_failure(error: str) -> None:
    err.print(f"[yellow]failed: {escape(error)}[/]", highlight=False, soft_wrap=True)


@contextmanager
def _file_progress(total: int):
    """One progress bar over files (with an ETA) on stderr when there is more than one file."""
    if total <= 1:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("tagging"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=err) as progress:
        task = progress.add_task("files", total=total)
        yield lambda: progress.advance(task)


def _print_comparison(comparison: dict, truth: Path) -> None:
    table = Table(title=f"the whole song against its truth ({truth})")
    for col in ("level", "found", "missed", "false", "precision", "recall", "F1"):
        table.add_column(col, justify="right" if col in ("precision", "recall", "F1") else "left")
    for level, s in comparison["song"].items():
        table.add_row(level, ", ".join(s["found"]) or "-", ", ".join(s["missed"]) or "-", ", ".join(s["false"]) or "-",
                      f"{s['precision']:.2f}", f"{s['recall']:.2f}", f"{s['f1']:.2f}")
    console.print(table)
    t = Table(title=f"per section (fine tags): {comparison['sections_right']} of {len(comparison['sections'])} "
                    f"sections right (F1 ≥ {comparison['right_f1']:.1f})")
    for col in ("section", "found", "missed", "false", "F1"):
        t.add_column(col, justify="right" if col == "F1" else "left")
    for s in comparison["sections"]:
        t.add_row(f"{s['start']:.0f}–{s['end']:.0f} s", "[green]" + (", ".join(s["found"]) or "-") + "[/]",
                  "[yellow]" + (", ".join(s["missed"]) or "-") + "[/]", "[red]" + (", ".join(s["false"]) or "-") + "[/]",
                  f"{s['f1']:.2f}")
    console.print(t)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_model(tagger) -> None:
    """Once per predict: which model tags (provenance), the demonstration notice, the tags it cannot decide."""
    m = tagger.info
    val = m.get("validation")
    scores = (", ".join(f"{lv} F1 {100 * v['f1']:.1f}%" for lv, v in val.items() if v.get("f1") == v.get("f1"))
              if isinstance(val, dict) else "unknown")
    stand_in = {True: "the rendered stand-in", False: "not rendered by hmic synth"}.get(m.get("stand_in"), "unknown whether stand-in")
    err.print(f"model: {m.get('model')} ({m.get('method')}, backbone {m.get('backbone')}, {m.get('protocol')}); trained on "
              f"{m.get('dataset')} ({m.get('train_clips')} train clips, {stand_in}); validation {scores} (at thresholds tuned "
              "on it: optimistic)",
              highlight=False, soft_wrap=True)
    if m.get("notice"):
        err.print(f"[yellow]notice:[/] {escape(m['notice'])}", highlight=False, soft_wrap=True)
    untrained = [f"{t} ({why})" for level in ("coarse", "fine") for t, why in tagger.thresholds.not_trained.get(level, {}).items()]
    if untrained:
        err.print(f"not trained (no threshold; never marked present, left out of label tracks): {', '.join(untrained)}",
                  highlight=False, soft_wrap=True)


DECISION_NOTE = {"any-child": "a coarse tag is present exactly when one of its fine tags is (its own threshold unused)",
                 "under-parent": "a fine tag is present only under a present coarse tag",
                 "independent": "each level by its own thresholds (marks may contradict the hierarchy)"}


def _cell_mark(x: dict) -> str:
    if "not_trained" in x:
        return ""  # neither ✓ nor ·: the threshold cell says "not trained"
    return "[green]✓[/]" if x["present"] else "[dim]·[/]"


def _digits(x: dict) -> int:
    """Decimals enough to show on which side of its threshold a probability lies (2, up to 4): p 0.5296
    under a threshold of 0.5304 prints "0.5296 ≥0.5304", not "0.53 ≥0.53"."""
    p, t = x["probability"], x.get("threshold")
    if t is None or x.get("decided_by") == "children":
        return 2
    return next((d for d in (2, 3) if (round(p, d) >= round(t, d)) == (p >= t)), 4)


def _cell_p(x: dict) -> str:
    return f"{x['probability']:.{_digits(x)}f}"


def _cell_threshold(x: dict) -> str:
    if "not_trained" in x:
        return "[yellow]not trained[/]"
    if x.get("decided_by") == "children":
        return "any child"
    parent = ", parent absent" if x.get("decided_by") == "parent" else ""  # reached, yet only present under a present parent
    return f"≥{x['threshold']:.{_digits(x)}f}{parent}"


def _print_song(result: dict, segments: bool, explain: bool) -> None:
    if "tree" in result:
        return _print_tree(result, segments, explain)
    m = result.get("model") or {}
    decision = result.get("decision", "independent")
    title = _song_title(result)
    table = Table(title=title, min_width=min(len(title), console.width),  # the title on one line where it fits
                  caption=f"model {m.get('model', result.get('checkpoint'))}, trained on {m.get('dataset', 'unknown')}; "
                          f"decision {decision}: {DECISION_NOTE[decision]}; "
                          "✓ present when p reaches the threshold shown", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for col in ("coarse", "p", "threshold", "", "fine", "p", "threshold", ""):
        table.add_column(col, justify="right" if col in ("p", "threshold") else "left", no_wrap=True)
    for c in result["coarse"]:
        for i, f in enumerate(c["fine"]):
            first = i == 0
            table.add_row(c["tag"] if first else "", _cell_p(c) if first else "",
                          _cell_threshold(c) if first else "", _cell_mark(c) if first else "",
                          f["tag"], _cell_p(f), _cell_threshold(f), _cell_mark(f))
        table.add_section()
    console.print(table)
    if explain:
        for c in result["coarse"]:
            if c["present"]:
                why = ""
                if c.get("decided_by") == "children":
                    why = "; present because " + ", ".join(f["tag"] for f in c["fine"] if f["present"]) + " ✓"
                console.print(f"  {c['tag']}: {explanation_text(c['explanation'])}{why}", highlight=False, soft_wrap=True)
        sources = [f for c in result["coarse"] for f in c["fine"] if f["present"] and "audioset_class" in f]
        for f in sources:  # the audioset model: which AudioSet class carried each present fine tag
            a = f["audioset_class"]
            console.print(f"  {f['tag']} ← {a['name']} {a['probability']:.2f} (window at {a['window_start']:.0f} s)",
                          highlight=False)
    if segments:
        _print_timeline(result, "present coarse tags")


def _print_timeline(result: dict, what: str) -> None:
    """The present coarse (inner) nodes of each window, under the result's decision rule."""
    from hmic.tagging.results import window_marks

    basis = result.get("threshold_basis", "clip")
    also = "" if basis == "clip" else f"; the file's marks above use {basis} thresholds, so they can differ"
    console.print(f"timeline ({what} per window, at clip thresholds{also}; decision {result.get('decision', 'independent')}):",
                  highlight=False, soft_wrap=True)  # a line, not a title squeezed to the table's width
    t = Table()
    t.add_column("window")
    t.add_column(what)
    for s, _, coarse_on in window_marks(result):
        tags = [f"{k} {v:.2f}" for k, v in s["coarse"].items() if k in coarse_on]
        t.add_row(f"{s['start']:.0f}–{s['end']:.0f} s", ", ".join(tags) or "-")
    console.print(t)


def _song_title(result: dict) -> str:
    return (f"{result['file']} ({result['duration_seconds']:.1f} s, {result['method']}, {result['aggregate']} over "
            f"{_plural(len(result['segments']), 'window')}, {result['threshold_basis']} thresholds)")


def _print_tree(result: dict, segments: bool, explain: bool) -> None:
    """A hierarchy deeper than 2 levels: one row per node, indented under its parent (``results.tree_rows``)."""
    from hmic.tagging.results import walk

    m = result.get("model") or {}
    decision = result.get("decision", "independent")
    title = _song_title(result)
    table = Table(title=title, min_width=min(len(title), console.width),
                  caption=f"model {m.get('model', result.get('checkpoint'))}, trained on {m.get('dataset', 'unknown')}; "
                          f"decision {decision}: {DECISION_NOTE[decision].replace('fine tags', 'children')}; "
                          "✓ present when p reaches the threshold shown", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for col in ("tag", "p", "threshold", ""):
        table.add_column(col, justify="right" if col in ("p", "threshold") else "left", no_wrap=True)
    for depth, n in walk(result["tree"]):
        if depth == 0 and table.row_count:
            table.add_section()
        table.add_row(escape("  " * depth + n["tag"]), _cell_p(n), _cell_threshold(n), _cell_mark(n))
    console.print(table)
    if explain:
        for _, n in walk(result["tree"]):
            if n["children"] and n["present"]:
                why = ""
                if n.get("decided_by") == "children":
                    why = "; present because " + ", ".join(k["tag"] for k in n["children"] if k["present"]) + " ✓"
                console.print(f"  {n['path']}: {explanation_text(n['explanation'])}{why}", highlight=False, soft_wrap=True)
    if segments:
        _print_timeline(result, "present inner nodes")


def explanation_text(e: dict) -> str:
    """One line saying what the head computed for a present coarse tag (``results.explain``)."""
    at = f"window at {e['window_start']:.0f} s"
    kids = e["carried_by"]
    if e["basis"] == "max child":
        x = kids[0]
        return f"max child {x['tag']} p {x['probability']:.2f} = coarse p {e['coarse_probability']:.2f} ({at})"
    if e["basis"] == "own score":
        x = kids[0]
        return (f"own score p {e['coarse_probability']:.2f}, above its max child {x['tag']} p {x['probability']:.2f} "
                f"(the max over itself and its children) ({at})")
    if e["basis"] == "mean":
        terms = " + ".join(f"{x['tag']} {x['term']:.2f}" for x in kids)
        return f"mean of the children, terms p/n: {terms} = {e['sum_of_terms']:.2f} = coarse p {e['coarse_probability']:.2f} ({at})"
    if e["basis"] == "attention":
        terms = ", ".join(f"{x['tag']} w {x['weight']:.2f} × p {x['probability']:.2f} = {x['term']:.2f}" for x in kids)
        return (f"attention, coarse p = Σ w·p over {e.get('over', 'all fine tags')} = {e['sum_of_terms']:.2f}; "
                f"largest terms: {terms} ({at})")
    if e["basis"] == "projection":
        terms = ", ".join(f"{x['tag']} a {x['weight']:.2f} × p {x['probability']:.2f} = {x['term']:.2f}" for x in kids)
        return f"projection, largest terms a·p of the coarse logit: {terms or 'none positive'} ({at})"
    listed = ", ".join(f"{x['tag']} p {x['probability']:.2f}" for x in kids)
    return f"own coarse classifier, p {e['coarse_probability']:.2f}; its fine tags: {listed} ({at})"


def _print_summary(result: dict) -> None:
    from hmic.tagging.results import marks

    coarse, fine = marks(result)
    deep = "tree" in result  # deeper than 2 levels: the inner nodes, then the leaves
    first, second = ("inner nodes", "leaves") if deep else ("coarse", "fine")
    console.print(f"{result['file']}: {first}: {', '.join(coarse) or 'none'} | {second}: {', '.join(fine) or 'none'}",
                  highlight=False, soft_wrap=True)


@app.command("import")
def import_(
    manifest: Annotated[Path, typer.Argument(help="CSV: path[,start,end][,group][,split], then one column per fine tag (1, 0 or blank).")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create (new or empty).")],
    hierarchy: HierarchyOpt = None,
    copy: Annotated[bool, typer.Option(help="Copy the audio instead of linking it.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the grouped train/test draw (without a split column).")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Share of clips drawn (by whole groups) into test.")] = 0.25,
    clip_seconds: Annotated[float, typer.Option(help="Clip length; longer stretches are cut into clips.")] = 10.0,
) -> None:
    """Turn your own labelled audio (a CSV manifest) into a dataset the other commands read."""
    from hmic.data.hierarchy import load_hierarchy
    from hmic.data.ingest import import_manifest

    h = load_hierarchy(hierarchy)
    s = import_manifest(manifest, out, h, copy=copy, seed=seed, test_fraction=test_fraction, clip_seconds=clip_seconds)
    console.print(f"{s['rows']} rows, {s['files']} files ({s['audio']}) → {s['clips']} clips of {clip_seconds:g} s in {out}/: "
                  f"{s['train_clips']} train, {s['test_clips']} test, {s['groups']} groups")
    if s["unlabelled_tags"]:
        n, total = len(s["unlabelled_tags"]), len(h.fine_names)
        console.print(f"{n} of the hierarchy's {total} fine tags are labelled in no row (no column, or only blanks): "
                      f"{', '.join(s['unlabelled_tags'])}; a model trained on this set cannot decide them (predict shows "
                      "them as 'not trained'). To leave them out, pass a --hierarchy without them", highlight=False, soft_wrap=True)
    if s["weakly_labelled_clips"]:
        console.print(f"{s['weakly_labelled_clips']} clips were cut from longer files and carry their file's labels (weak labels)")
    console.print(f"next: hmic split --data-dir {out} && hmic featurize --data-dir {out} && hmic train --data-dir {out} ...", highlight=False, soft_wrap=True)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (its best.pt) or checkpoint, with tuned thresholds.")],
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="ONNX file to write (its weights go to FILE.data beside it).", show_default="RUN/model.onnx")] = None,
) -> None:
    """Export a run to ONNX (log-mel front-end inside the graph; hierarchy and thresholds in its metadata)."""
    from hmic.tagging.export import export_onnx

    out = onnx or (run / "model.onnx" if run.is_dir() else run.with_suffix(".onnx"))
    report = export_onnx(run, out)
    console.print(f"written {out} and its weights {report['weights']} ({report['bytes'] / 1e6:.1f} MB, {report['method']}, outputs "
                  f"{', '.join(report['outputs'])}); onnxruntime against PyTorch on {report['probe_windows']} "
                  f"probe windows: max |Δp| = {report['max_abs_probability_difference']:.2e}")
    console.print(f"tag with it: hmic predict SONG --backend onnx --run {out} (keep the two files together)", highlight=False, soft_wrap=True)


@app.command()
def table(
    runs_dir: Annotated[Path, typer.Argument(help="Runs folder (one sub-folder per method).")] = Path("runs"),
    out: Annotated[Path, typer.Option(help="Where table1.md/.csv and the figures go.")] = Path("results"),
    split: Annotated[ScoredSplit, typer.Option(help="Which part to score.")] = ScoredSplit.test,
) -> None:
    """Table 1 for the runs that exist (λ selected on validation, mean ± std over seeds), Fig. 3 and Fig. 4; a column group per depth for a hierarchy deeper than two. Reads runs only."""
    from hmic.evaluation.report import write_table
    from hmic.runs.run import finished_runs

    _warn_mixed_code(finished_runs(runs_dir))
    result = write_table(runs_dir, out, split.value)
    typer.echo(result["markdown"])
    for fig in result["figures"]:
        console.print(f"figure: {fig}", highlight=False, soft_wrap=True)
    console.print(f"table: {out / 'table1.md'}, {out / 'table1.csv'}", highlight=False, soft_wrap=True)


def _warn_mixed_code(found: list) -> None:
    """One line on stderr when the runs combined come from different commits or modified trees."""
    from hmic.runs.provenance import mixed_code_warning

    warning = mixed_code_warning(found)
    if warning:
        err.print(f"[yellow]{escape(warning)}[/]", highlight=False, soft_wrap=True)


@app.command("runs")
def runs_(
    runs_dir: Annotated[Path, typer.Argument(help="Runs folder (any depth), or one run folder.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list (an object per run) instead of the table.")] = False,
) -> None:
    """Every run under a folder: method, λ, seed, protocol, state, best epoch, wall time, tuned, commit. Reads only."""
    import json

    from hmic.runs.listing import format_seconds, list_runs

    found = list_runs(runs_dir)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in found], indent=2))
        return
    if not found:
        raise HmicError(f"no runs under {runs_dir}; train some with 'hmic train --runs-dir {runs_dir}'")
    colour = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}
    counts = {state: sum(r.state == state for r in found) for state in colour}
    title = f"{len(found)} run(s) under {runs_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    columns = ("run", "method", "λ", "seed", "protocol", "state", "best epoch", "val fine loss", "wall time", "tuned", "commit")
    rows = []
    for r in found:
        where = Path(r.run)
        with suppress(ValueError):
            where = where.relative_to(runs_dir)
        rows.append([str(where), r.method, f"{r.lam:.2f}", str(r.seed), r.protocol, r.state_text,
                     "-" if r.best_epoch is None else str(r.best_epoch + 1),
                     "-" if r.best_val_fine_loss is None else f"{r.best_val_fine_loss:.4f}",
                     format_seconds(r.wall_seconds) if r.epochs_done else "-", "yes" if r.tuned else "no", r.commit])
    right = {"λ", "seed", "best epoch", "val fine loss", "wall time"}
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    if sum(widths) + 3 * len(widths) + 1 > console.width:  # too narrow for the table (a pipe, a small terminal):
        # aligned plain lines that never cut a cell, the run's path first (method, λ and seed are in it)
        console.print(title, highlight=False, soft_wrap=True)
        keep = [i for i, c in enumerate(columns) if c not in ("method", "λ", "seed")]
        for row in [list(columns)] + rows:
            cells = [row[i].rjust(widths[i]) if columns[i] in right else row[i].ljust(widths[i]) for i in keep]
            console.print(escape("  ".join(cells).rstrip()), highlight=False, soft_wrap=True)
        return
    table = Table(title=title)
    for col in columns:  # one line per run: the full error is in --json
        table.add_column(col, justify="right" if col in right else "left", no_wrap=col == "state")
    state = columns.index("state")
    for r, row in zip(found, rows):
        cells = [escape(c) for c in row]
        cells[state] = f"[{colour[r.state]}]{cells[state]}[/]"
        table.add_row(*cells)
    console.print(table)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (never overwritten).")],
    clips: Annotated[int, typer.Option(help="Number of clips.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed: same seed and options give the same data.")] = 0,
    duration: Annotated[float, typer.Option(help="Clip length in seconds.")] = 10.0,
    label_noise: Annotated[float, typer.Option(help="Probability of flipping an observed label.")] = 0.0,
    soundfont: Annotated[Optional[list[Path]], typer.Option(help="SF2/SF3 file; repeat it to draw each part's font from several.", show_default="TimGM6mb.sf2 of pretty_midi")] = None,
    variety: Annotated[bool, typer.Option(help="Vary tempo, articulation, register, per-stem EQ, compression and room, and add background noise.")] = False,
    workers: Annotated[int, typer.Option(help="Parallel rendering processes.", show_default="min(4, CPUs)")] = max(1, min(4, os.cpu_count() or 1)),
) -> None:
    """Render an OpenMIC-format stand-in dataset from General MIDI SoundFonts."""
    from hmic.data.synth.dataset import SynthOptions, synthesize

    opts = SynthOptions(clips=clips, seed=seed, duration=duration, label_noise=label_noise,
                        soundfonts=tuple(str(f) for f in soundfont or ()), variety=variety)
    summary = synthesize(out, opts, workers=workers, console=err)
    console.print(
        f"{summary['clips']} clips in {out}/ ({summary['train']} train / {summary['test']} test), "
        f"rendered in {summary['render_seconds']:.1f} s"
    )


@app.command("synth-song")
def synth_song(
    out: Annotated[Path, typer.Argument(help="WAV file to write.")],
    seconds: Annotated[float, typer.Option(help="Length of the song.")] = 90.0,
    seed: Annotated[int, typer.Option(help="Seed of the arrangement.")] = 0,
    soundfont: Annotated[Optional[Path], typer.Option(help="SF2/SF3 file.", show_default="TimGM6mb.sf2 of pretty_midi")] = None,
) -> None:
    """Render a song of changing ensembles (sections of 15-30 s) and its ground truth, to try `hmic predict` on."""
    from hmic.data.synth.song import render_song

    if seconds < 1:
        raise typer.BadParameter("--seconds must be at least 1")
    sections = render_song(out, seconds, seed, str(soundfont) if soundfont else None)
    table = Table(title=f"{out} ({seconds:.0f} s): what is really playing")
    for col in ("from", "to", "ensemble", "instruments"):
        table.add_column(col)
    for s in sections:
        table.add_row(f"{s['start']:.0f} s", f"{s['end']:.0f} s", s["ensemble"], ", ".join(s["instruments"]))
    console.print(table)
    from hmic.data.synth.song import truth_path

    console.print(f"ground truth: {truth_path(out)} (compare with 'hmic predict {out} --truth {truth_path(out)}')", highlight=False, soft_wrap=True)


# Failures of the machine rather than of the input (a full disk, a read-only or forbidden folder): one
# line naming the file and the cause, no traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main() -> None:
    try:
        app()
    except HmicError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"[bold red]error:[/] {escape(where + (e.strerror or str(e)))}; fix it (free space, permissions) and run "
                  "the same command again: finished work is kept and long jobs resume", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit as e:
        if e.code == 130:  # Typer turns Ctrl-C into a silent exit 130
            err.print("[yellow]interrupted; work done so far is kept: re-run the same command to resume "
                      "(for hmic train, add --resume)[/]", soft_wrap=True)
        raise


if __name__ == "__main__":
    main()
