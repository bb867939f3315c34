"""A stand-in that transfers: several SoundFonts, per-stem and per-mix variety, and training
augmentations (gain, shift, mixup with labels mixed under partial observation)."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hmic.data.synth.render as render
from hmic.data.hierarchy import Hierarchy
from hmic.training.augment import Augment, augment_batch, mix_labels
from hmic.data.synth.dataset import SynthOptions, plan_dataset, synthesize
from hmic.data.synth.render import check_soundfont, default_soundfont, render_part


def distorted_font(path: Path) -> Path:
    """A second, different SoundFont for tests: TimGM6mb with its samples hard-clipped (other timbres)."""
    data = bytearray(default_soundfont().read_bytes())
    at = data.index(b"smpl", data.index(b"sdta"))
    size = struct.unpack("<I", data[at + 4:at + 8])[0]
    pcm = np.frombuffer(bytes(data[at + 8:at + 8 + size]), dtype="<i2").astype(np.int32)
    data[at + 8:at + 8 + size] = np.clip(pcm * 6, -32767, 32767).astype("<i2").tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_reused_synth_renders_like_a_fresh_one():
    font = check_soundfont(default_soundfont())
    parts = [p for plan in plan_dataset(SynthOptions(clips=3, seed=5)) for p in plan.parts]
    reused = [render_part(p, 10.0, font) for p in parts]
    fresh = []
    for p in parts:
        render._SYNTHS.clear()
        fresh.append(render_part(p, 10.0, font))
    assert all(np.array_equal(a, b) for a, b in zip(reused, fresh))


def test_two_fonts_and_variety_render_deterministically(tmp_path):
    second = distorted_font(tmp_path / "clipped.sf2")
    fonts = (str(default_soundfont()), str(second))
    opts = SynthOptions(clips=5, seed=2, soundfonts=fonts, variety=True)
    plans = plan_dataset(opts)
    assert {p.font for plan in plans for p in plan.parts} == {0, 1}
    assert all(plan.variety is not None for plan in plans)
    a = synthesize(tmp_path / "a", opts, workers=2, progress=False)
    b = synthesize(tmp_path / "b", opts, workers=1, progress=False)
    assert a["options"]["soundfonts"] == list(fonts) and len(a["options"]["soundfont_bytes"]) == 2
    for f in sorted((tmp_path / "a" / "audio").rglob("*.ogg")):
        x, _ = sf.read(f)
        y, _ = sf.read(tmp_path / "b" / f.relative_to(tmp_path / "a"))
        assert np.array_equal(x, y)
    for name in ("openmic-2018-aggregated-labels.csv", "synth-ground-truth.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    # one font and no variety leave the plans exactly as before the options existed
    plain = plan_dataset(SynthOptions(clips=5, seed=2))
    assert all(p.font == 0 and p.eq_tilt == 0 for plan in plain for p in plan.parts)
    assert [p.tag for plan in plain for p in plan.parts] == [p.tag for plan in plans for p in plan.parts]
    # the second font is really another sound
    part = next(p for plan in plain for p in plan.parts if p.program >= 0)
    clipped = check_soundfont(second)
    assert not np.allclose(render_part(part, 10.0, check_soundfont(default_soundfont())), render_part(part, 10.0, clipped))


def test_mixup_labels_under_partial_observation():
    # tags: a, b, c, d, e — target 1/0, mask 1 = observed
    t1, m1 = torch.tensor([[1., 0., 0., 1., 0.]]), torch.tensor([[1., 1., 1., 0., 0.]])
    t2, m2 = torch.tensor([[0., 0., 1., 0., 0.]]), torch.tensor([[1., 1., 0., 1., 0.]])
    t, m = mix_labels(t1, m1, t2, m2)
    # a: present in 1 -> present; b: absent in both -> absent; c: absent in 1, unobserved in 2 -> unknown;
    # d: unobserved in 1 (target ignored), absent in 2 -> unknown; e: unobserved in both -> unknown
    assert t.tolist() == [[1., 0., 0., 0., 0.]]
    assert m.tolist() == [[1., 1., 0., 0., 0.]]
    # a positive observed in the second clip wins over an unobserved first
    t, m = mix_labels(torch.tensor([[0.]]), torch.tensor([[0.]]), torch.tensor([[1.]]), torch.tensor([[1.]]))
    assert (t.item(), m.item()) == (1.0, 1.0)


# two fine tags under one coarse tag
PAIR = Hierarchy.two_level("pair", ("group",), ("a", "b"), (0, 0))


def COARSE_OF(t, m):
    return PAIR.coarse_targets(t, m, "any")


def test_augment_batch_is_seeded_and_does_what_it_says():
    x = torch.randn(4, 100, 8) * 10 - 40
    ft = torch.tensor([[1., 0.], [0., 0.], [0., 1.], [1., 1.]])
    fm = torch.ones(4, 2)
    ct, cm = ft.clone(), fm.clone()
    gain = augment_batch(x, ft, fm, ct, cm, Augment(gain_db=6.0), torch.Generator().manual_seed(1), 100.0, COARSE_OF)[0]
    offsets = (gain - x).flatten(1)
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-4) and offsets.abs().max() <= 6.0
    per_clip = offsets[:, 0]
    assert per_clip.abs().min() > 1e-3 and len({round(float(v), 3) for v in per_clip}) == 4  # a gain, one per clip
    shifted = augment_batch(x, ft, fm, ct, cm, Augment(shift_seconds=0.2), torch.Generator().manual_seed(1), 100.0, COARSE_OF)[0]
    shifts = [next(s for s in range(-20, 21) if torch.equal(shifted[i], torch.roll(x[i], s, 0))) for i in range(4)]
    assert any(s != 0 for s in shifts) and len(set(shifts)) > 1  # really shifted, by per-clip amounts
    one = augment_batch(x, ft, fm, ct, cm, Augment(mixup_alpha=1.0), torch.Generator().manual_seed(3), 100.0, COARSE_OF)
    two = augment_batch(x, ft, fm, ct, cm, Augment(mixup_alpha=1.0), torch.Generator().manual_seed(3), 100.0, COARSE_OF)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    mixed, mft, mfm = one[:3]
    # which clips were mixed is read from the output (not by replaying the implementation's draws); a
    # clip drawn as its own partner comes back unchanged up to float rounding
    chosen = [i for i in range(4) if (mixed[i] - x[i]).abs().mean() > 0.1]
    assert 0 < len(chosen) < 4
    for i in range(4):
        if i in chosen:  # a mixture of two clips: its power lies between theirs, bin by bin
            partners = [j for j in range(4) if j != i
                        and (mixed[i] <= torch.maximum(x[i], x[j]) + 1e-3).all()
                        and (mixed[i] >= torch.minimum(x[i], x[j]) - 1e-3).all()]
            assert partners
            assert ((mft[i] == 1) >= (ft[i] == 1)).all()  # a present tag stays present in its mixture
        else:  # the other clips and their labels are left alone
            assert torch.allclose(mixed[i], x[i], atol=1e-4) and torch.equal(mft[i], ft[i]) and torch.equal(mfm[i], fm[i])


def test_training_with_augmentation_runs_and_is_reproducible(prepared, tmp_path):
    from conftest import tiny_config
    from hmic.training.finetune import train_run

    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(prepared, tmp_path / name, method="gmp", epochs=1)
        cfg.aug_gain_db, cfg.aug_shift_seconds, cfg.mixup_alpha = 6.0, 1.0, 1.0
        runs.append(train_run(cfg, progress=False))
    plain = train_run(tiny_config(prepared, tmp_path / "plain", method="gmp", epochs=1), progress=False)
    a = torch.load(Path(runs[0]["run"]) / "best.pt", weights_only=True)["model"]
    b = torch.load(Path(runs[1]["run"]) / "best.pt", weights_only=True)["model"]
    c = torch.load(Path(plain["run"]) / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the augmentation changed training
    config = json.loads((Path(runs[0]["run"]) / "config.json").read_text())
    assert config["mixup_alpha"] == 1.0 and config["aug_gain_db"] == 6.0


def test_bad_augmentation_options_are_clear_errors(prepared, tmp_path):
    from conftest import tiny_config
    from hmic.errors import HmicError

    cfg = tiny_config(prepared, tmp_path)
    cfg.aug_shift_seconds = 20.0
    with pytest.raises(HmicError, match="shorter than a clip"):
        cfg.validate()
    cfg.aug_shift_seconds, cfg.mixup_alpha = 0.0, -1.0
    with pytest.raises(HmicError, match="0 \\(off\\) or more"):
        cfg.validate()


@pytest.mark.parametrize("rule", ["any", "strict"])
def test_a_mixtures_coarse_labels_follow_from_its_mixed_fine_labels(rule):
    """Clip 1 observed a absent and never b; clip 2 observed b absent and never a. Each clip's coarse
    label is 'absent' under 'any'; their mixture observes neither fine tag (absent in one, unknown in the
    other), so its coarse label is unknown too: mixing the coarse labels on their own (absent in both)
    would train an observed absence that no fine label supports."""
    ft = torch.tensor([[0., 0.], [0., 0.]])
    fm = torch.tensor([[1., 0.], [0., 1.]])
    ct, cm = (torch.from_numpy(a).float() for a in PAIR.coarse_targets(ft.numpy(), fm.numpy() > 0, rule))

    def coarse_of(t, m):
        return PAIR.coarse_targets(t, m, rule)

    x = torch.randn(2, 50, 8) * 10 - 40
    for seed in range(50):
        out = augment_batch(x, ft, fm, ct, cm, Augment(mixup_alpha=1.0), torch.Generator().manual_seed(seed), 100.0,
                            coarse_of)
        mixed = [i for i in range(2) if (out[0][i] - x[i]).abs().mean() > 0.1]
        if mixed:
            break
    assert mixed, "no seed mixed a clip"
    _, mft, mfm, mct, mcm = out
    expected_t, expected_m = PAIR.coarse_targets(mft.numpy(), mfm.numpy() > 0, rule)
    assert np.array_equal(mct.numpy(), expected_t) and np.array_equal(mcm.numpy() > 0, expected_m)
    for i in mixed:
        assert mfm[i].sum() == 0 and mcm[i].item() == 0  # nothing observed in the mixture, coarse included
