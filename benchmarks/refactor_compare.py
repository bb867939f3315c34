"""Compare two refactor_check.sh folders: every decoded clip, feature, saved probability, metric, table and
tag must be identical (usage: python benchmarks/refactor_compare.py BEFORE AFTER)."""
import json, sys
from pathlib import Path
import numpy as np

a, b = Path(sys.argv[1]), Path(sys.argv[2])
bad = []
def same(x, y, what):
    if x != y:
        bad.append(what)
for name in ("meta.md5", "feat.md5"):
    same((a / name).read_text(), (b / name).read_text(), name)
import soundfile as sf  # OGG files carry random stream serials: compare the decoded samples
oggs = sorted(p.relative_to(a) for p in a.glob("data/synth/audio/*/*.ogg"))
same(oggs, sorted(p.relative_to(b) for p in b.glob("data/synth/audio/*/*.ogg")), "audio files")
for p in oggs:
    if not np.array_equal(sf.read(a / p)[0], sf.read(b / p)[0]):
        bad.append(f"decoded {p}")
def runs_in(d):  # the fine-tuned runs, and the frozen grid's where the check made one
    return sorted(p.parent.relative_to(d) for top in ("runs", "frozen-runs") for p in d.glob(f"{top}/**/done.json"))
runs_a, runs_b = runs_in(a), runs_in(b)
same(runs_a, runs_b, "run folders")
n_arrays = 0
for r in runs_a:
    for split in ("val", "test"):
        za, zb = np.load(a / r / f"predictions_{split}.npz"), np.load(b / r / f"predictions_{split}.npz")
        for k in za.files:
            if k == "parent":
                continue
            n_arrays += 1
            if k not in zb.files or not np.array_equal(za[k], zb[k]):
                bad.append(f"{r} {split} {k}")
    ma = [json.loads(l) for l in (a / r / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(l) for l in (b / r / "metrics.jsonl").read_text().splitlines()]
    # timings (seconds, data/compute/validation/checkpoint seconds) differ run to run; checkpoint_bytes is
    # the size of files that also hold the run's config, which grows when TrainConfig gains a field
    for x in ma + mb:
        for k in [k for k in x if k.endswith("seconds") or k in ("peak_memory_bytes", "checkpoint_bytes")]:
            x.pop(k)
    # a newer hmic may add keys to a row (train_clips, checkpoint_bytes): every key of A must be equal in B
    same([{k: x[k] for k in x} for x in ma], [{k: y.get(k) for k in x} for x, y in zip(ma, mb)] + mb[len(ma):],
         f"{r} metrics")
    ta, tb = (json.loads((d / r / "thresholds.json").read_text()) for d in (a, b))
    same({k: ta[k] for k in ("fine", "coarse")}, {k: tb[k] for k in ("fine", "coarse")}, f"{r} thresholds")
ea, eb = (json.loads((d / "eval.json").read_text()) for d in (a, b))
same(ea["macro"], eb["macro"], "eval macro"); same(ea["per_tag"], eb["per_tag"], "eval per tag")
if (a / "eval-frozen.json").exists():
    fa, fb = (json.loads((d / "eval-frozen.json").read_text()) for d in (a, b))
    same(fa["macro"], fb["macro"], "frozen eval macro"); same(fa["per_tag"], fb["per_tag"], "frozen eval per tag")
def table_rows(path):  # the table's rows, without significance markers a newer hmic adds
    return [l.replace(" ▲", "").replace(" ▼", "") for l in path.read_text().splitlines() if l.startswith("|")]
same(table_rows(a / "results/table1.md"), table_rows(b / "results/table1.md"), "table1.md")
import csv
ca, cb = (list(csv.DictReader((d / "results/table1.csv").read_text().splitlines())) for d in (a, b))
same(ca, [{k: y.get(k) for k in x} for x, y in zip(ca, cb)], "table1.csv (the columns of A)")
def keys_of(x, y):  # y with x's keys only, at every level: a newer hmic may add keys (format_version)
    if isinstance(x, dict) and isinstance(y, dict):
        return {k: keys_of(v, y.get(k)) for k, v in x.items()}
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [keys_of(u, v) for u, v in zip(x, y)]
    return y
for p in ("pred_resatt.json", "pred_gmp.json"):
    pa, pb = (json.loads((d / p).read_text()) for d in (a, b))
    for r in pa["results"] + pb["results"]:
        r.pop("checkpoint")
    same(pa, keys_of(pa, pb), p)
same((a / "pred_resatt.csv").read_text(), (b / "pred_resatt.csv").read_text(), "pred csv")
print(f"{len(runs_a)} runs, {n_arrays} prediction arrays compared")
print("IDENTICAL" if not bad else "DIFFERENT: " + "; ".join(bad))
