"""Every head at any depth against an independent numpy reference (issue 34, "Correct by construction").

The reference below is written from the heads' definitions (docs/taxonomies.md, issue 34), not from the
torch code: it reads only each node's parents (``Hierarchy.node_parents``, the hierarchy's definition) and
derives children, depths, descendants and ancestors itself, in float64. The heads' weights come from the
torch module's state. Three hierarchies: the bundled 3-level ``openmic-hornbostel-sachs`` tree over
OpenMIC's tags, a hand-made 4-level tree with leaves at depths 1, 2 and 3 (a node with a single child, a
node with both leaf and inner children), and a small DAG (a leaf with parents on two levels).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmic.data.hierarchy import Hierarchy, load_hierarchy
from hmic.data.taxonomy import from_nested, from_parent_csv
from hmic.models.constraint import mcloss
from hmic.models.heads import build_head, hierarchical_loss

HEADS_ANY_DEPTH = ("flat", "levelwise", "topdown", "gap", "gmp", "lp", "lp-linear", "resatt", "mcm")
DIM = 12

TWO_LEVEL = load_hierarchy()
OPENMIC_HS = load_hierarchy("openmic-hornbostel-sachs", TWO_LEVEL.fine_names)
TOY_TREE = Hierarchy.from_taxonomy(from_nested({"name": "toy", "tree": {
    "strings": {"bowed": ["violin", "cello"],
                "plucked": ["harp", {"guitars": ["acoustic_guitar", "electric_guitar"]}]},
    "winds": ["flute", {"brass": ["trumpet"]}],
    "percussion": ["drums"],
}}, "toy.yaml"), ["drums", "trumpet", "violin", "electric_guitar", "flute", "harp", "cello", "acoustic_guitar"])
DAG_CSV = """node,parent
percussion,
keys,
strings,
kit,percussion
drums,percussion
cowbell,percussion
cowbell,kit
snare,kit
piano,keys
piano,strings
organ,keys
violin,strings
"""
DAG = Hierarchy.from_taxonomy(from_parent_csv(DAG_CSV, "dag.csv"),
                              ["drums", "cowbell", "snare", "piano", "organ", "violin"])
DEEP = {"openmic-hs": OPENMIC_HS, "toy-4-level": TOY_TREE, "dag": DAG}


# ----------------------------------------------------------------------------------------------
# The reference: structure from the parents alone, heads and losses from their definitions, float64


class Structure:
    """Children, depths (longest path from a root), descendants-or-self and ancestors-or-self of every
    node, from the parent lists alone."""

    def __init__(self, parents):
        self.k = len(parents)
        self.parents = [list(ps) for ps in parents]
        self.kids = [[i for i in range(self.k) if n in self.parents[i]] for n in range(self.k)]
        self.inner = [n for n in range(self.k) if self.kids[n]]
        self.leaves = [n for n in range(self.k) if not self.kids[n]]
        self.depth = [self._depth(n) for n in range(self.k)]
        self.below = [self._below(n) for n in range(self.k)]  # descendants-or-self
        self.above = [{a for a in range(self.k) if n in self.below[a]} for n in range(self.k)]  # ancestors-or-self
        self.n_levels = max(self.depth) + 1

    def _depth(self, n):
        return 0 if not self.parents[n] else 1 + max(self._depth(p) for p in self.parents[n])

    def _below(self, n):
        out = {n}
        for c in self.kids[n]:
            out |= self._below(c)
        return out

    def bottom_up(self):
        """Inner nodes, deepest first."""
        return sorted(self.inner, key=lambda n: -self.depth[n])


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def bce(p, t):
    p = np.clip(p, 1e-300, 1)
    q = np.clip(1 - p, 1e-300, 1)
    return -(t * np.log(p) + (1 - t) * np.log(q))


def bce_logits(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def weights_of(head):
    return {k: v.detach().double().numpy() for k, v in head.state_dict().items()}


def linear(w, name, z):
    return z @ w[name + ".weight"].T + w[name + ".bias"]


def reference(method, head, h: Hierarchy, z):
    """Node probabilities (B, K) in node-id order, node logits (mcm: own scores) and the extra loss term."""
    s = Structure(h.node_parents)
    assert s.leaves == list(range(h.n_coarse, h.n_nodes)), "the fine nodes are the leaves"
    w = weights_of(head)
    b, c = len(z), h.n_coarse
    p = np.zeros((b, s.k))
    own = None
    extra = 0.0
    if method != "mcm":
        p[:, c:] = sigmoid(linear(w, "fine", z))
    if method in ("flat", "gmp"):
        for n in s.inner:
            p[:, n] = np.max([p[:, leaf] for leaf in s.below[n] if leaf >= c], axis=0)
    elif method == "levelwise":
        p[:, :c] = sigmoid(linear(w, "coarse", z))
        down = [np.maximum(p[:, child] - p[:, parent], 0) for child in range(s.k) for parent in s.parents[child]]
        up = [np.maximum(p[:, n] - np.max([p[:, k] for k in s.kids[n]], axis=0), 0) for n in s.inner]
        extra = np.mean(down) + np.mean(up)
    elif method == "topdown":
        own_p = np.concatenate([sigmoid(linear(w, "coarse", z)), sigmoid(linear(w, "fine", z))], axis=1)
        for n in range(s.k):
            p[:, n] = np.prod([own_p[:, a] for a in s.above[n]], axis=0)  # each ancestor once, itself included
    elif method == "gap":
        for n in s.bottom_up():
            p[:, n] = np.mean([p[:, k] for k in s.kids[n]], axis=0)
    elif method == "lp":
        p[:, :c] = p[:, c:] @ softmax(w["projection"], axis=0)  # A (F, C), softmax over the leaves
    elif method == "lp-linear":
        p[:, :c] = sigmoid(linear(w, "projection", p[:, c:]))
    elif method == "resatt":
        sources = [n for n in range(s.k) if s.parents[n]]
        logits = linear(w, "attention", z).reshape(b, len(sources), c)
        allowed = np.array([[s.depth[src] == s.depth[n] + 1 for n in range(c)] for src in sources])
        att = softmax(np.where(allowed, logits, -np.inf), axis=1)
        for n in s.bottom_up():
            p[:, n] = sum(att[:, j, n] * p[:, src] for j, src in enumerate(sources))
        extra = att
    elif method == "mcm":
        own = np.concatenate([linear(w, "coarse", z), linear(w, "fine", z)], axis=1)
        for n in range(s.k):
            p[:, n] = sigmoid(np.max([own[:, d] for d in s.below[n]], axis=0))
    return p, own, extra


def default_level_weights(n_levels, lam):
    if n_levels == 2:
        return [1 - lam, lam]
    return [(1 - lam) / (n_levels - 1)] * (n_levels - 1) + [lam]


def reference_loss(method, h, p, own, extra, y, m, lam, alpha, level_weights=None):
    """The loss of one run: y, m (B, K) node targets and mask in node-id order."""
    s = Structure(h.node_parents)
    c = h.n_coarse
    if method == "mcm":  # MCLoss: a positive node scored by its best observed-positive descendant-or-self
        per = np.zeros_like(p)
        for n in range(s.k):
            below = sorted(s.below[n])
            all_max = own[:, below].max(axis=1)
            pos = np.where((y[:, below] > 0.5) & m[:, below], own[:, below], -np.inf).max(axis=1)
            mixed = np.where((y[:, n] > 0.5) & np.isfinite(pos), pos, all_max)
            per[:, n] = bce_logits(mixed, y[:, n])
    else:
        per = bce(p, y)
    per = per * m
    if method == "flat":  # the leaves alone
        return per[:, c:].sum() / max(m[:, c:].sum(), 1)
    weights = default_level_weights(s.n_levels, lam) if level_weights is None else level_weights
    total = 0.0
    for d in range(s.n_levels):
        at = [n for n in range(s.k) if s.depth[n] == d]
        total += weights[d] * per[:, at].sum() / max(m[:, at].sum(), 1)
    if method == "levelwise":
        total += alpha * extra
    return total


# ----------------------------------------------------------------------------------------------
# helpers


def make_head(method, h, seed=0, **kwargs):
    torch.manual_seed(seed)
    head = build_head(method, DIM, h) if not kwargs else type(build_head(method, DIM, h))(DIM, h, **kwargs)
    with torch.no_grad():
        for q in head.parameters():  # lp's zero-initialised A would hide a wrong softmax axis
            q.normal_(0, 0.6)
    return head


def node_labels(h, b, seed):
    """Random node targets and masks (B, K), independent per node (the loss must not assume propagation)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((b, h.n_nodes)) < 0.4).astype(np.float32)
    m = rng.random((b, h.n_nodes)) < 0.75
    return y, m


def split(h, y, m):
    c = h.n_coarse
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (y[..., c:], m[..., c:], y[..., :c], m[..., :c])]
    return t  # fine targets, fine mask, coarse targets, coarse mask


def node_probs(out):
    return torch.cat([out.coarse_probs, out.fine_probs], dim=-1)


# ----------------------------------------------------------------------------------------------
# each head against the reference


@pytest.mark.parametrize("name", list(DEEP))
@pytest.mark.parametrize("method", HEADS_ANY_DEPTH)
def test_every_head_and_its_loss_equal_the_numpy_reference_at_depth(method, name):
    h = DEEP[name]
    assert not h.is_two_level and h.n_levels >= 3
    head = make_head(method, h, seed=1)
    z = torch.randn(7, DIM, generator=torch.Generator().manual_seed(2))
    out = head(z)
    p, own, extra = reference(method, head, h, z.double().numpy())
    np.testing.assert_allclose(out.fine_probs.detach().numpy(), p[:, h.n_coarse:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.coarse_probs.detach().numpy(), p[:, :h.n_coarse], rtol=1e-5, atol=1e-6)
    if method == "resatt":  # the map itself: 0 outside the level below, 1 summed over the sources
        np.testing.assert_allclose(out.attention.detach().numpy(), extra, rtol=1e-5, atol=1e-6)
        extra = 0.0
    y, m = node_labels(h, 7, seed=3)
    lam, alpha = 0.7, 0.5
    got = hierarchical_loss(out, head, *split(h, y, m), lam, alpha)
    want = reference_loss(method, h, p, own, extra, y.astype(np.float64), m, lam, alpha)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    # the weights' roles: λ on the deepest level and 1 − λ shared by the others; a vector overrides λ
    vector = [0.5, 0.2, 0.3] + [0.1] * (h.n_levels - 3)
    got = hierarchical_loss(out, head, *split(h, y, m), lam, alpha, level_weights=vector)
    want_vector = reference_loss(method, h, p, own, extra, y.astype(np.float64), m, lam, alpha, vector)
    assert got.item() == pytest.approx(want_vector, rel=1e-5, abs=1e-6)
    if method != "flat":
        assert abs(want_vector - want) > 1e-4  # the override reaches the loss (flat trains its leaves alone)
    got.backward()
    grads = [q.grad for q in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_the_reference_hierarchies_are_what_they_claim():
    s = Structure(TOY_TREE.node_parents)
    assert s.n_levels == 4
    depth_of = dict(zip(TOY_TREE.node_names, s.depth))
    assert {depth_of[n] for n in TOY_TREE.fine_names} == {1, 2, 3}
    assert depth_of["acoustic_guitar"] == 3 and depth_of["drums"] == 1 and depth_of["harp"] == 2
    d = Structure(DAG.node_parents)
    cowbell = DAG.node_names.index("cowbell")
    assert sorted(DAG.node_names[p] for p in d.parents[cowbell]) == ["kit", "percussion"]
    assert d.depth[cowbell] == 2 and d.n_levels == 3
    assert tuple(s.depth) == TOY_TREE.depth and tuple(d.depth) == DAG.depth


@pytest.mark.parametrize("name", list(DEEP))
def test_gmp_and_mcm_are_coherent_on_random_inputs(name):
    h = DEEP[name]
    for method in ("gmp", "mcm", "topdown"):
        for seed in range(3):
            head = make_head(method, h, seed=seed)
            with torch.no_grad():
                for q in head.parameters():
                    q.mul_(5)
                p = node_probs(head(torch.randn(64, DIM) * 3))
            parent, child = torch.from_numpy(h.edges[:, 0]), torch.from_numpy(h.edges[:, 1])
            assert (p[:, parent] >= p[:, child]).all(), f"{method} seed {seed}: a parent below its child"


def test_mcm_without_own_inner_scores_is_gmp_trained_with_mcloss():
    gmp = make_head("gmp", TWO_LEVEL, seed=5)
    mcm = make_head("mcm", TWO_LEVEL, seed=6, own_inner_scores=False)
    assert not hasattr(mcm, "coarse")
    mcm.load_state_dict(gmp.state_dict())
    z = torch.randn(9, DIM)
    a, b = gmp(z), mcm(z)
    assert torch.equal(a.fine_probs, b.fine_probs) and torch.equal(a.coarse_probs, b.coarse_probs)
    rng = np.random.default_rng(8)
    leaf_y = (rng.random((9, TWO_LEVEL.n_fine)) < 0.3).astype(np.float32)
    leaf_m = rng.random((9, TWO_LEVEL.n_fine)) < 0.8
    ft, fm, ct, cm = (torch.from_numpy(x) for x in TWO_LEVEL.targets(leaf_y, leaf_m))
    lam = 0.8
    got = hierarchical_loss(b, mcm, ft, fm, ct, cm, lam)
    c = TWO_LEVEL.n_coarse
    scores = torch.cat([torch.zeros(9, c), a.fine_logits], dim=-1)  # gmp's scores: the leaves' logits
    scored = [False] * c + [True] * TWO_LEVEL.n_fine
    per = mcloss(scores, torch.cat([ct, ft], -1), TWO_LEVEL.descendants_or_self, torch.cat([cm, fm], -1),
                 scored=scored, reduction="none")
    want = lam * per[:, c:].sum() / fm.sum() + (1 - lam) * per[:, :c].sum() / cm.sum()
    torch.testing.assert_close(got, want)
    # and it is not gmp's plain BCE: MCLoss scores a positive coarse tag by its best positive child
    assert not torch.allclose(got, hierarchical_loss(a, gmp, ft, fm, ct, cm, lam))


@pytest.mark.parametrize("method", HEADS_ANY_DEPTH)
def test_the_any_depth_arithmetic_is_the_papers_on_two_levels(method):
    """``generic = True`` on the 2-level default: the same outputs and loss as the paper's form."""
    assert TWO_LEVEL.is_two_level
    paper = make_head(method, TWO_LEVEL, seed=7)
    generic = make_head(method, TWO_LEVEL, seed=8)
    generic.load_state_dict(paper.state_dict())
    generic.generic = True
    assert paper.paper_form and not generic.paper_form
    z = torch.randn(8, DIM)
    y, m = node_labels(TWO_LEVEL, 8, seed=9)
    outs, losses = [], []
    for head in (paper, generic):
        out = head(z)
        outs.append(out)
        losses.append(hierarchical_loss(out, head, *split(TWO_LEVEL, y, m), 0.75, 0.5))
    a, b = outs
    torch.testing.assert_close(b.fine_probs, a.fine_probs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.coarse_probs, a.coarse_probs, rtol=1e-6, atol=1e-6)
    if a.attention is not None:
        torch.testing.assert_close(b.attention, a.attention, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", HEADS_ANY_DEPTH)
def test_a_stack_of_runs_at_depth_3_is_each_run_alone(method):
    """Parameters stacked (R, ...) through ``torch.func.functional_call`` (as hmic.training.frozen uses them)
    against batches (R, B, D): each run's outputs and loss (its own λ) are those of its head alone."""
    from torch.func import functional_call

    h, runs, b = OPENMIC_HS, 3, 5
    heads = [make_head(method, h, seed=10 + r) for r in range(runs)]
    stacked = {n: torch.stack([dict(x.named_parameters())[n].detach() for x in heads]).requires_grad_()
               for n, _ in heads[0].named_parameters()}
    z = torch.randn(runs, b, DIM)
    y, m = node_labels(h, runs * b, seed=12)
    y, m = y.reshape(runs, b, -1), m.reshape(runs, b, -1)
    lams = torch.tensor([0.6, 0.75, 0.9])
    out = functional_call(heads[0], (stacked, dict(heads[0].named_buffers())), (z,))
    loss = hierarchical_loss(out, heads[0], *split(h, y, m), lams, 0.5)
    assert loss.shape == (runs,) and out.coarse_probs.shape == (runs, b, h.n_coarse)
    loss.sum().backward()
    for r, head in enumerate(heads):
        alone = head(z[r])
        alone_loss = hierarchical_loss(alone, head, *split(h, y[r], m[r]), float(lams[r]), 0.5)
        torch.testing.assert_close(out.fine_probs[r], alone.fine_probs)
        torch.testing.assert_close(out.coarse_probs[r], alone.coarse_probs)
        torch.testing.assert_close(loss[r], alone_loss)
        alone_loss.backward()
        for n, q in head.named_parameters():
            torch.testing.assert_close(stacked[n].grad[r], q.grad, msg=f"{method}: the gradient of {n}")
