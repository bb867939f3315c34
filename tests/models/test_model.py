import numpy as np
import pytest
import torch

from conftest import panns_frontend_tensors
from hmic.audio.decoding import FrontendConfig
from hmic.errors import HmicError
from hmic.models.heads import HEADS, build_head, hierarchical_loss
from hmic.data.hierarchy import load_hierarchy
from hmic.models.backbones import BackboneConfig, build_backbone, count
from hmic.models.panns import check_frontend_tensors
from hmic.data.openmic import OPENMIC_TAGS
from hmic.models.model import HierarchicalModel

H = load_hierarchy(None, list(OPENMIC_TAGS))
METHODS = ("flat", "levelwise", "topdown", "gap", "lp", "gmp", "resatt", "lp-linear")


def test_every_method_is_registered():
    assert set(METHODS) <= set(HEADS)


@pytest.mark.parametrize("method", METHODS)
def test_head_shapes_and_probability_range(method):
    torch.manual_seed(0)
    head = build_head(method, 32, H)
    out = head(torch.randn(5, 32) * 3)
    assert out.fine_probs.shape == (5, 20) and out.coarse_probs.shape == (5, 7)
    for p in (out.fine_probs, out.coarse_probs):
        assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()


@pytest.mark.parametrize("method", METHODS)
def test_a_head_with_stacked_parameters_is_each_run_alone(method):
    """Parameters stacked (S, L, ...) against batches (S, 1, B, D) (a frozen stack: S seeds' batches, each
    read by its L λ heads): every run's outputs, loss and gradients are those of its head alone on its
    batch, within float32 rounding, and the loss is one value per run."""
    from torch.func import functional_call

    torch.manual_seed(4)
    S, L, B, D = 2, 3, 5, 32
    heads = [build_head(method, D, H) for _ in range(S * L)]
    for h in heads:  # lp's projection starts at zero: make every parameter differ between runs
        for q in h.parameters():
            q.data.add_(torch.randn_like(q) * 0.1)
    lams = torch.tensor([0.7, 0.8, 0.9] * S).view(S, L)
    z = torch.randn(S, B, D).relu()
    ft, fm = torch.rand(S, B, 20).round(), torch.rand(S, B, 20) > 0.3
    ct, cm = torch.rand(S, B, 7).round(), torch.rand(S, B, 7) > 0.3
    stacked = {n: torch.stack([dict(h.named_parameters())[n].detach() for h in heads]).view(S, L, *q.shape)
               .requires_grad_() for n, q in heads[0].named_parameters()}
    out = functional_call(heads[0], (stacked, dict(heads[0].named_buffers())), (z[:, None],))
    loss = hierarchical_loss(out, heads[0], ft[:, None], fm[:, None], ct[:, None], cm[:, None], lams)
    assert loss.shape == (S, L) and out.fine_probs.shape == (S, L, B, 20) and out.coarse_probs.shape == (S, L, B, 7)
    loss.sum().backward()
    for r, head in enumerate(heads):
        s, l = divmod(r, L)
        alone = head(z[s])
        alone_loss = hierarchical_loss(alone, head, ft[s], fm[s], ct[s], cm[s], float(lams[s, l]))
        alone_loss.backward()
        torch.testing.assert_close(out.fine_probs[s, l], alone.fine_probs)
        torch.testing.assert_close(out.coarse_probs[s, l], alone.coarse_probs)
        if alone.attention is not None:
            torch.testing.assert_close(out.attention[s, l], alone.attention)
        torch.testing.assert_close(loss[s, l], alone_loss)
        for n, q in head.named_parameters():
            torch.testing.assert_close(stacked[n].grad[s, l], q.grad, msg=f"{method}: the gradient of {n}")


def test_gmp_is_the_grouped_max_and_gap_the_grouped_mean():
    torch.manual_seed(1)
    z = torch.randn(4, 32)
    for method, reduce in (("gmp", np.max), ("gap", np.mean)):
        out = build_head(method, 32, H)(z)
        fine = out.fine_probs.detach().numpy()
        expected = np.stack([reduce(fine[:, H.children(c)], axis=1) for c in range(H.n_coarse)], axis=1)
        np.testing.assert_allclose(out.coarse_probs.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_topdown_fine_never_exceeds_its_parent():
    torch.manual_seed(2)
    out = build_head("topdown", 32, H)(torch.randn(64, 32) * 4)
    parent = out.coarse_probs[:, list(H.parent)]
    assert (out.fine_probs <= parent + 1e-7).all()
    np.testing.assert_allclose(out.fine_probs.detach().numpy(), np.exp(out.fine_log_probs.detach().numpy()), rtol=1e-6)


def test_resatt_attention_sums_to_one_over_fine_tags_and_depends_on_the_input():
    torch.manual_seed(3)
    head = build_head("resatt", 32, H)
    out = head(torch.randn(6, 32))
    assert out.attention.shape == (6, 20, 7)
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(6, 7))
    recomputed = torch.einsum("bfc,bf->bc", out.attention, out.fine_probs)
    torch.testing.assert_close(out.coarse_probs, recomputed)
    assert (out.attention[0] - out.attention[1]).abs().max() > 1e-4


def test_lp_projection_does_not_depend_on_the_input():
    torch.manual_seed(4)
    head = build_head("lp", 32, H)
    with torch.no_grad():
        head.projection.normal_()
    out = head(torch.randn(6, 32))
    for b in range(1, 6):
        torch.testing.assert_close(out.attention[b], out.attention[0])
    torch.testing.assert_close(out.attention[0].sum(dim=0), torch.ones(7))


def labels(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    ft = (torch.rand(b, 20, generator=g) < 0.3).float()
    fm = torch.rand(b, 20, generator=g) < 0.5
    ct, cm = H.coarse_targets(ft.numpy(), fm.numpy(), "any")
    return ft, fm, torch.from_numpy(ct), torch.from_numpy(cm)


def test_flat_loss_ignores_the_coarse_level():
    torch.manual_seed(5)
    head = build_head("flat", 32, H)
    out = head(torch.randn(8, 32))
    ft, fm, ct, cm = labels()
    a = hierarchical_loss(out, head, ft, fm, ct, cm, lam=0.5)
    b = hierarchical_loss(out, head, ft, fm, 1 - ct, cm, lam=0.5)
    assert a.item() == b.item()
    gmp = build_head("gmp", 32, H)
    out = gmp(torch.randn(8, 32))
    assert hierarchical_loss(out, gmp, ft, fm, ct, cm, 0.5).item() != hierarchical_loss(out, gmp, ft, fm, 1 - ct, cm, 0.5).item()


def test_loss_uses_only_observed_entries():
    torch.manual_seed(6)
    head = build_head("gmp", 32, H)
    out = head(torch.randn(8, 32))
    ft, fm, ct, cm = labels()
    flipped = torch.where(fm, ft, 1 - ft)  # change only unobserved entries
    a = hierarchical_loss(out, head, ft, fm, ct, cm, 0.8)
    b = hierarchical_loss(out, head, flipped, fm, ct, cm, 0.8)
    assert a.item() == pytest.approx(b.item())


@pytest.mark.parametrize("method", METHODS)
def test_gradient_reaches_the_backbone(method):
    torch.manual_seed(7)
    model = HierarchicalModel(BackboneConfig("cnn14-tiny"), method, H)
    out = model(torch.randn(2, 200, 64))
    ft, fm, ct, cm = labels(2)
    hierarchical_loss(out, model.head, ft, torch.ones_like(fm), ct, torch.ones_like(cm), 0.8).backward()
    grad = model.backbone.conv_block1.conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_cnn14_sizes():
    full = count(BackboneConfig("cnn14"))
    assert full["params"] + 527 * 2048 + 527 == 80_753_615  # cnn14.md, with the AudioSet classifier
    assert 19e9 < full["macs"] < 21e9
    light = count(BackboneConfig("cnn14-light"))
    assert light["macs"] < full["macs"] / 50


def checkpoint_state(seed=0):
    """A randomly filled state_dict with the 84 keys and shapes of the official 16 kHz checkpoint."""
    torch.manual_seed(seed)
    backbone = build_backbone(BackboneConfig("cnn14"))
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    state.update(panns_frontend_tensors())
    state["fc_audioset.weight"] = torch.randn(527, 2048)
    state["fc_audioset.bias"] = torch.randn(527)
    return state


@pytest.fixture(scope="module")
def ckpt_state():
    return checkpoint_state()


def test_checkpoint_shaped_file_loads_strictly(tmp_path, ckpt_state):
    assert len(ckpt_state) == 84
    path = tmp_path / "cnn14.pth"
    torch.save({"model": ckpt_state, "iteration": 10}, path)
    backbone = build_backbone(BackboneConfig("cnn14"))
    backbone.load_pretrained(path, FrontendConfig())
    torch.testing.assert_close(backbone.fc1.weight, ckpt_state["fc1.weight"])
    torch.testing.assert_close(backbone.conv_block6.bn2.running_var, ckpt_state["conv_block6.bn2.running_var"])
    assert check_frontend_tensors(ckpt_state, FrontendConfig()) == []


def test_checkpoint_with_a_missing_key_or_a_wrong_shape_is_refused(tmp_path, ckpt_state):
    missing = dict(ckpt_state)
    del missing["conv_block3.bn1.running_mean"]
    torch.save({"model": missing}, tmp_path / "a.pth")
    with pytest.raises(HmicError, match="missing keys: conv_block3.bn1.running_mean"):
        build_backbone(BackboneConfig("cnn14")).load_pretrained(tmp_path / "a.pth", FrontendConfig())
    wrong = dict(ckpt_state)
    wrong["fc1.weight"] = torch.randn(2048, 1024)
    torch.save({"model": wrong}, tmp_path / "b.pth")
    with pytest.raises(HmicError, match=r"fc1.weight: \(2048, 1024\) in the file"):
        build_backbone(BackboneConfig("cnn14")).load_pretrained(tmp_path / "b.pth", FrontendConfig())
    extra = dict(ckpt_state)
    extra["conv_block7.conv1.weight"] = torch.randn(1)
    torch.save({"model": extra}, tmp_path / "c.pth")
    with pytest.raises(HmicError, match="unexpected keys: conv_block7.conv1.weight"):
        build_backbone(BackboneConfig("cnn14")).load_pretrained(tmp_path / "c.pth", FrontendConfig())


def test_a_checkpoint_with_a_different_front_end_is_reported(tmp_path, ckpt_state):
    other = dict(ckpt_state)
    other["logmel_extractor.melW"] = other["logmel_extractor.melW"] * 1.01
    problems = check_frontend_tensors(other, FrontendConfig())
    assert len(problems) == 1 and "logmel_extractor.melW" in problems[0]


def test_known_checkpoint_name_with_a_wrong_md5_and_pickles_are_refused(tmp_path):
    path = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(HmicError, match="MD5"):
        build_backbone(BackboneConfig("cnn14-tiny")).load_pretrained(path, FrontendConfig())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(HmicError, match="not a loadable PyTorch checkpoint"):
        build_backbone(BackboneConfig("cnn14-tiny")).load_pretrained(tmp_path / "evil.pth", FrontendConfig())


def test_specaugment_masks_stripes_only_in_training():
    torch.manual_seed(8)
    from hmic.models.backbones import spec_augment

    x = torch.ones(4, 1, 1001, 64)
    y = spec_augment(x, BackboneConfig())
    zeros = (y == 0)
    assert zeros.any() and not zeros.all()
    # each zeroed entry lies in a full time row or a full mel column of its example
    rows = zeros.all(dim=3, keepdim=True)
    cols = zeros.all(dim=2, keepdim=True)
    assert torch.equal(zeros, rows | cols)
    model = build_backbone(BackboneConfig("cnn14-tiny"))
    x = torch.randn(2, 300, 64)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # no SpecAugment, no dropout
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("method", METHODS)
def test_a_heads_explanation_survives_the_trip_through_json(method):
    """Exported ONNX files carry Head.explainer() as JSON; explanations from it equal the head's own."""
    import json

    from hmic.models.explain import Explainer

    torch.manual_seed(3)
    head = build_head(method, 32, H)
    if method == "lp-linear":
        torch.nn.init.normal_(head.projection.weight)
    out = head(torch.randn(4, 32))
    restored = Explainer.from_dict(json.loads(json.dumps(head.explainer().to_dict())), H.membership)
    fine = out.fine_probs.detach().numpy()
    attention = None if out.attention is None else out.attention.detach().numpy()
    for w in range(4):
        for c in range(H.n_coarse):
            a = head.explain(c, fine[w], None if attention is None else attention[w])
            b = restored.explain(c, fine[w], None if attention is None else attention[w])
            assert (a.basis, a.order) == (b.basis, b.order)
            assert np.allclose(a.probabilities, b.probabilities, atol=1e-6)
            assert (a.terms is None) == (b.terms is None) and (a.terms is None or np.allclose(a.terms, b.terms, atol=1e-6))


def test_the_inference_backbone_computes_the_same_function():
    """FileTagger.load folds each BatchNorm into its convolution (Backbone.for_inference): faster, same outputs."""
    import copy

    torch.manual_seed(5)
    backbone = build_backbone(BackboneConfig("cnn14-tiny")).eval()
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        x = torch.randn(3, 300, 64) * 10 - 30
        want = backbone(x)
        folded = copy.deepcopy(backbone).for_inference()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.conv_block1.modules())
        got = folded.to(memory_format=torch.channels_last)(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("width", [1, 2])
def test_a_narrow_convolution_as_a_matrix_product_equals_the_convolution(width):
    from hmic.models.backbones import NarrowConv

    torch.manual_seed(width)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1, bias=True)
    x = torch.randn(3, 6, 7, width)
    with torch.no_grad():
        narrow = NarrowConv(conv, width)
        assert torch.allclose(narrow(x), conv(x), atol=1e-5)
        assert torch.allclose(narrow(x.contiguous(memory_format=torch.channels_last)), conv(x), atol=1e-5)
        with pytest.raises(HmicError, match="built for"):
            narrow(torch.randn(1, 6, 7, width + 2))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bce(p, t, m):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    per = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return (per * m).sum() / max(m.sum(), 1)


def numpy_head(method, head, z):
    """Each head's fine and coarse probabilities and extra loss, written from its definition (methods.md §3)."""
    w = {k: v.detach().double().numpy() for k, v in head.named_parameters()}
    parent = np.array(H.parent)
    kids = [H.children(c) for c in range(H.n_coarse)]
    zf = z @ w["fine.weight"].T + w["fine.bias"]
    pf = _sigmoid(zf)
    extra = 0.0
    if method == "topdown":
        pc = _sigmoid(z @ w["coarse.weight"].T + w["coarse.bias"])
        pf = pf * pc[:, parent]
    elif method == "levelwise":
        pc = _sigmoid(z @ w["coarse.weight"].T + w["coarse.bias"])
        max_child = np.stack([pf[:, k].max(axis=1) for k in kids], axis=1)
        extra = np.maximum(pf - pc[:, parent], 0).mean() + np.maximum(pc - max_child, 0).mean()
    elif method in ("flat", "gmp"):
        pc = np.stack([pf[:, k].max(axis=1) for k in kids], axis=1)
    elif method == "gap":
        pc = np.stack([pf[:, k].mean(axis=1) for k in kids], axis=1)
    elif method == "lp":
        a = np.exp(w["projection"]) / np.exp(w["projection"]).sum(axis=0, keepdims=True)  # softmax over F
        pc = pf @ a
    elif method == "lp-linear":
        pc = _sigmoid(pf @ w["projection.weight"].T + w["projection.bias"])
    elif method == "resatt":
        logits = (z @ w["attention.weight"].T + w["attention.bias"]).reshape(len(z), H.n_fine, H.n_coarse)
        att = np.exp(logits - logits.max(axis=1, keepdims=True))
        att /= att.sum(axis=1, keepdims=True)  # softmax over the fine tags
        pc = np.einsum("bfc,bf->bc", att, pf)
    return pf, pc, extra


@pytest.mark.parametrize("method", METHODS)
def test_every_head_and_the_loss_equal_an_independent_numpy_reference(method):
    torch.manual_seed(11)
    head = build_head(method, 16, H)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)  # lp's zero-initialised A would hide a wrong softmax axis
    z = torch.randn(6, 16)
    ft, fm, ct, cm = labels(6, seed=3)
    out = head(z)
    pf, pc, extra = numpy_head(method, head, z.double().numpy())
    np.testing.assert_allclose(out.fine_probs.detach().numpy(), pf, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.coarse_probs.detach().numpy(), pc, rtol=1e-5, atol=1e-6)
    lam, alpha = 0.8, 1.0
    fine, coarse = _bce(pf, ft.numpy(), fm.numpy()), _bce(pc, ct.numpy(), cm.numpy())
    want = fine if method == "flat" else lam * fine + (1 - lam) * coarse + alpha * extra
    got = hierarchical_loss(out, head, ft, fm, ct, cm, lam, alpha).item()
    assert got == pytest.approx(want, rel=1e-5)
    if method != "flat":  # λ weighs the fine level: swapping λ and 1 − λ would be caught here
        assert abs(got - ((1 - lam) * fine + lam * coarse + alpha * extra)) > 1e-4


def test_a_backbone_of_other_mel_bands_names_the_featurize_option_that_makes_them():
    with pytest.raises(HmicError, match="hmic featurize --n-mels 64"):
        build_backbone(BackboneConfig("cnn14-tiny")).check_frontend(FrontendConfig(n_mels=32))
