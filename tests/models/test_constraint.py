"""C-HMCNN's MCM and MCLoss (hmic.models.constraint): coherence, gmp at depth 2, gradients, level weights."""

import numpy as np
import pytest
import torch

from hmic.data.hierarchy import DEFAULT_HIERARCHY, load_hierarchy
from hmic.data.openmic import OPENMIC_TAGS
from hmic.data.taxonomy import Taxonomy, bundled_taxonomy, node_targets, propagate
from hmic.errors import HmicError
from hmic.models.constraint import level_weighted_loss, mcloss, mcm
from hmic.models.heads import build_head, hierarchical_loss

TAGS = list(OPENMIC_TAGS)


def random_dag(seed: int, k: int = 30) -> Taxonomy:
    """Nodes in a shuffled order, each with 0-3 parents among the nodes drawn before it (several roots)."""
    rng = np.random.default_rng(seed)
    names = [f"n{i}" for i in rng.permutation(k)]
    edges = []
    for i in range(1, k):
        for p in rng.choice(i, size=min(i, int(rng.integers(0, 4))), replace=False):
            edges.append((names[p], names[i]))
    return Taxonomy.from_edges(f"dag{seed}", names, edges, by_level=False)


def _edges(tax):
    return np.array([p for p, _ in tax.edges]), np.array([c for _, c in tax.edges])


@pytest.mark.parametrize("seed", range(5))
def test_mcm_is_coherent_on_random_dags(seed):
    tax = random_dag(seed)
    assert not tax.is_tree and len(tax.roots) > 1  # the generator makes real DAGs with several roots
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, tax.n_nodes, generator=g) * 3
    out = mcm(logits, tax.descendants_or_self)
    parent, child = _edges(tax)
    assert (out[:, parent] >= out[:, child]).all()
    assert (logits[:, parent] >= logits[:, child]).logical_not().any()  # the raw scores were not coherent
    assert (out >= logits).all() and torch.equal(mcm(out, tax.descendants_or_self), out)  # idempotent
    assert torch.allclose(mcm(torch.sigmoid(logits), tax.descendants_or_self), torch.sigmoid(out))  # σ commutes
    # by definition: each node is the max of its descendants-or-self
    r = tax.descendants_or_self
    for a in range(tax.n_nodes):
        assert torch.equal(out[:, a], logits[:, np.flatnonzero(r[a])].max(dim=1).values)


def test_mcm_takes_stacked_leading_axes():
    tax = bundled_taxonomy("audioset-musical-instrument")
    logits = torch.randn(3, 5, tax.n_nodes)
    out = mcm(logits, tax.descendants_or_self)
    assert out.shape == (3, 5, tax.n_nodes)
    assert torch.equal(out[1], mcm(logits[1], tax.descendants_or_self))
    cow, bell, perc = (tax.index[n] for n in ("Cowbell", "Bell", "Percussion"))
    assert (out[..., bell] >= out[..., cow]).all() and (out[..., perc] >= out[..., cow]).all()


def test_mcm_without_coarse_scores_is_gmp_at_depth_2():
    h = load_hierarchy(DEFAULT_HIERARCHY, TAGS)
    tax = Taxonomy.from_hierarchy(h)
    torch.manual_seed(0)
    head = build_head("gmp", 16, h)
    z = torch.randn(8, 16)
    out = head(z)
    fine_logits = out.fine_logits.detach().requires_grad_(True)
    scores = torch.cat([torch.full((8, h.n_coarse), 123.0), fine_logits], dim=1)  # coarse own scores ignored
    scored = [False] * h.n_coarse + [True] * h.n_fine
    nodes = mcm(scores, tax.descendants_or_self, scored=scored)
    assert torch.equal(nodes[:, :h.n_coarse], out.coarse_logits) and torch.equal(nodes[:, h.n_coarse:], fine_logits)
    # the same gradient as gmp's grouped max
    weights = torch.randn(8, h.n_coarse)
    (nodes[:, :h.n_coarse] * weights).sum().backward()
    reference = fine_logits.detach().requires_grad_(True)
    (head.grouped_max(reference) * weights).sum().backward()
    assert torch.equal(fine_logits.grad, reference.grad)
    with pytest.raises(HmicError, match="no scored descendant"):
        mcm(scores, tax.descendants_or_self, scored=[True] * h.n_coarse + [False] * h.n_fine)


def numpy_mcloss(logits, targets, mask, r):
    """Reference: the loss and its gradient from the paper's formula, entry by entry."""
    n, k = logits.shape
    grad = np.zeros_like(logits)
    total, count = 0.0, mask.sum()
    for b in range(n):
        for a in range(k):
            if not mask[b, a]:
                continue
            pool = np.flatnonzero(r[a])
            if targets[b, a] > 0.5:  # y_A = 1: the best positive descendant-or-self
                pos = [j for j in pool if targets[b, j] > 0.5 and mask[b, j]]
                pool = pos or pool
            j = pool[np.argmax(logits[b, pool])]
            z, y = logits[b, j], targets[b, a]
            total += np.logaddexp(0, z) - y * z
            grad[b, j] += (1 / (1 + np.exp(-z)) - y) / count
    return total / count, grad


@pytest.mark.parametrize("seed", range(4))
def test_mcloss_value_and_gradient_match_a_numpy_reference(seed):
    tax = random_dag(seed, k=12)
    rng = np.random.default_rng(seed)
    leaves = [tax.nodes[i] for i in tax.leaves]
    targets, mask = node_targets(tax, leaves, rng.random((10, len(leaves))), rng.random((10, len(leaves))) < 0.7)
    logits = rng.normal(0, 2, (10, tax.n_nodes))
    expected, expected_grad = numpy_mcloss(logits, targets, mask, tax.descendants_or_self)
    x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    loss = mcloss(x, torch.from_numpy(targets), tax.descendants_or_self, torch.from_numpy(mask))
    loss.backward()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), expected_grad, rtol=1e-4, atol=1e-7)
    assert targets[mask].min() == 0 and targets[mask].max() == 1


def test_mcloss_hand_worked():
    # a -> {b, c}; y = (1, 1, 0): a is scored by b (its positive child), not by c's high score
    tax = Taxonomy.from_edges("t", ["a", "b", "c"], [("a", "b"), ("a", "c")])
    z = torch.tensor([[-1.0, 0.5, 4.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0]])
    loss = mcloss(z, y, tax.descendants_or_self, reduction="none")
    sp = torch.nn.functional.softplus
    expected = torch.tensor([[sp(torch.tensor(-0.5)), sp(torch.tensor(-0.5)), sp(torch.tensor(4.0))]])
    assert torch.allclose(loss, expected)
    loss.sum().backward()
    # a's term and b's term both act on z_b; c's on z_c; a's own score gets nothing (b is above it)
    s = torch.sigmoid
    assert torch.allclose(z.grad, torch.tensor([[0.0, 2 * (s(torch.tensor(0.5)) - 1), s(torch.tensor(4.0))]]))
    # y = (0, 0, 0): a is scored by the max of all (c), pushing c down twice
    z2 = z.detach().clone().requires_grad_(True)
    mcloss(z2, torch.zeros(1, 3), tax.descendants_or_self, reduction="none").sum().backward()
    assert torch.allclose(z2.grad, torch.tensor([[0.0, s(torch.tensor(0.5)), 2 * s(torch.tensor(4.0))]]))


def test_mcloss_masks_and_stacked_runs():
    tax = bundled_taxonomy("openmic-hornbostel-sachs")
    rng = np.random.default_rng(0)
    targets, mask = node_targets(tax, TAGS, rng.random((6, 20)), rng.random((6, 20)) < 0.5)
    t, m = torch.from_numpy(targets), torch.from_numpy(mask)
    logits = torch.randn(3, 6, tax.n_nodes)
    stacked = mcloss(logits, t, tax.descendants_or_self, m)
    assert stacked.shape == (3,)
    assert torch.allclose(stacked[2], mcloss(logits[2], t, tax.descendants_or_self, m))
    per = mcloss(logits[0], t, tax.descendants_or_self, m, reduction="none")
    assert (per[~m] == 0).all() and torch.allclose(per.sum() / m.sum(), stacked[0])
    nothing = torch.zeros_like(m)
    assert mcloss(logits[0], t, tax.descendants_or_self, nothing).item() == 0.0


def test_an_unscored_positive_without_positive_scored_descendants_falls_back_to_mcm():
    tax = Taxonomy.from_edges("t", ["a", "b", "c"], [("a", "b"), ("a", "c")])
    y, m = propagate(tax, np.array([[1.0, 0, 0]]), np.array([[True, False, False]]))  # "a" labelled directly
    z = torch.tensor([[9.0, 0.3, -0.2]])
    per = mcloss(z, torch.from_numpy(y), tax.descendants_or_self, torch.from_numpy(m), scored=[False, True, True],
                 reduction="none")
    assert torch.isfinite(per).all()
    assert per[0, 0].item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(-0.3)).item(), rel=1e-6)


@pytest.mark.parametrize("method", ["gmp", "levelwise", "topdown"])
def test_level_weights_at_depth_2_are_the_papers_lambda(method):
    h = load_hierarchy(DEFAULT_HIERARCHY, TAGS)
    tax = Taxonomy.from_hierarchy(h)
    torch.manual_seed(1)
    head = build_head(method, 16, h)
    out = head(torch.randn(12, 16))
    rng = np.random.default_rng(1)
    targets, mask = node_targets(tax, TAGS, rng.random((12, 20)), rng.random((12, 20)) < 0.6)
    t, m = torch.from_numpy(targets), torch.from_numpy(mask)
    c = h.n_coarse
    lam = 0.8
    expected = hierarchical_loss(out, head, t[:, c:], m[:, c:], t[:, :c], m[:, :c], lam, alpha=0.0)
    probs = torch.cat([out.coarse_probs, out.fine_probs], dim=1).float().clamp(1e-7, 1 - 1e-7)
    per = torch.nn.functional.binary_cross_entropy(probs, t, reduction="none")
    got = level_weighted_loss(per, m, tax.depth, [1 - lam, lam])
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    stacked = level_weighted_loss(per.expand(2, -1, -1), m, tax.depth, torch.tensor([[1 - lam, lam], [0.0, 1.0]]))
    assert stacked.shape == (2,) and stacked[0].item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(HmicError, match="3 level weights for a taxonomy of 2 levels"):
        level_weighted_loss(per, m, tax.depth, [0.2, 0.3, 0.5])
