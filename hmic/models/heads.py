"""The hierarchical heads of the paper (docs/methods.md, "Heads") and the loss, behind one interface.

Every head maps the embedding Z (B, D) to a HeadOutput holding fine probabilities (B, F) and coarse
probabilities (B, C) (at any depth: the hierarchy's leaves and its inner nodes, ``hmic.data.hierarchy``), plus logits or log-probabilities where the head has them (for a stable loss) and
resatt's attention map (B, F, C). Heads and the loss are written for leading axes too: with every
parameter stacked along the same leading axes (R, ...) (``torch.func.functional_call``, a frozen stack of
runs, ``hmic.training.frozen``) and Z (..., B, D) broadcasting against them, the outputs are (R, B, ...) and the
loss is one value per run (R,), the same arithmetic per run without a per-run loop or vmap; a run's
values are always its last two axes (``RUN_AXES``). A head also says what it means: whether it is
trained on the coarse loss (``uses_coarse_loss``; flat is not, so its λ is 1), any extra loss term (``extra_loss``), and how
a coarse decision is explained (``explain``). A new head is one class and one ``@register`` line.

Any depth (docs/taxonomies.md): each head has the paper's 2-level arithmetic (``Hierarchy.is_two_level``:
kept exactly as it was, so depth-2 runs are bit-identical to earlier releases) and its generalisation to a
tree or DAG of any depth (``generic``: flat and gmp take the max over the leaves below a node, gap the mean
of the children recursively, topdown the product along the path, levelwise one classifier per level tied
along every parent link, resatt attention from each level to the level below, mcm C-HMCNN's max
constraint). ``Head.generic = True`` forces the general form on a 2-level hierarchy (tests prove the two
agree there). The loss weights the levels with a vector (``level_weights``; λ is its 2-level case).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hmic.models.explain import Explainer, Explanation
from hmic.data.hierarchy import Hierarchy
from hmic.registry import Registry

HEADS: Registry = Registry("--method")
EPS = 1e-7

# The paper's facts about its methods, here so that method names are spelled in this module only.
BASELINE = "flat"  # what every other method is compared with (hmic table's ▲ / ▼, hmic compare's default)
PAPER_TABLE1 = {  # the paper's Table 1, in its row order: fine ROC, PR, F1, coarse ROC, PR, F1 (%)
    "flat": (91.7, 85.6, 83.3, 92.4, 89.6, 84.4), "levelwise": (91.9, 85.8, 83.7, 93.0, 90.4, 85.2),
    "topdown": (91.9, 85.4, 83.6, 93.0, 90.4, 85.3), "gap": (91.7, 85.6, 83.2, 91.7, 87.6, 84.6),
    "lp": (91.8, 85.8, 83.6, 75.3, 70.9, 67.6), "gmp": (91.9, 85.9, 83.6, 93.1, 90.7, 85.4),
    "resatt": (92.0, 86.0, 83.7, 93.1, 90.7, 85.5),
}
PAPER_FIGURE3 = ("flat", "gmp", "resatt")  # per-seed fine-level box plots
PAPER_FIGURE4 = "resatt"  # attention maps
READY_MODEL = "audioset"  # the head that comes trained: hmic predict --model's one ready model

# Class decorator: make a head available as ``--method name``; its docstring's first line is the help.
register = HEADS.register
head_class = HEADS.lookup
describe_heads = HEADS.describe


@dataclass
class HeadOutput:
    fine_probs: torch.Tensor  # (B, F)
    coarse_probs: torch.Tensor  # (B, C)
    fine_logits: torch.Tensor | None = None
    coarse_logits: torch.Tensor | None = None
    fine_log_probs: torch.Tensor | None = None  # topdown: log P_f computed stably
    coarse_log_probs: torch.Tensor | None = None  # topdown below depth 2: log P_c along the path
    attention: torch.Tensor | None = None  # resatt: (B, S, C) over the sources S (Hierarchy.attention_sources;
    # at depth 2 the fine tags), sums to 1 over S
    node_scores: torch.Tensor | None = None  # mcm: each node's own logit (B, K) before the max constraint
    class_probs: torch.Tensor | None = None  # audioset: (B, K), the probability of each AudioSet class it reads


class Linear(nn.Linear):
    """``nn.Linear`` (the same parameters, state_dict keys and arithmetic), which also takes a weight and
    bias stacked along leading axes ((..., out, in), (..., out): a frozen stack's heads) and an input
    (..., B, in) broadcasting against them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.ndim == 2:
            return F.linear(x, self.weight, self.bias)
        return torch.matmul(x, self.weight.transpose(-1, -2)) + self.bias[..., None, :]


RUN_AXES = (-2, -1)  # a run's batch and tags; any axes before them are stacked runs


def level_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over a run's batch and tags: a scalar for one run, (R,) for a stack."""
    return x.mean(dim=RUN_AXES)


class Head(nn.Module):
    uses_coarse_loss = True  # False: trained on the fine loss alone, so λ is 1 whatever was asked
    ready_untrained = False  # True: its weights come trained (audioset), so a run may have 0 epochs

    @classmethod
    def lambda_for(cls, lam: float) -> float:
        """The λ a run of this head actually uses (and is filed under)."""
        return float(lam) if cls.uses_coarse_loss else 1.0

    @classmethod
    def lambdas_for(cls, lambdas: list[float]) -> list[float]:
        """The distinct λ values a grid over ``lambdas`` needs for this head (one for flat)."""
        return list(dict.fromkeys(cls.lambda_for(lam) for lam in lambdas))

    generic = False  # True: the any-depth arithmetic even on a 2-level hierarchy (tests)

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__()
        self.hierarchy = hierarchy
        self.register_buffer("membership", torch.from_numpy(hierarchy.membership), persistent=False)  # (C, F)
        if hierarchy.is_two_level:
            self.register_buffer("parent", torch.tensor(hierarchy.parent, dtype=torch.long), persistent=False)
        edges = torch.from_numpy(hierarchy.edges)
        self.register_buffer("edge_parent", edges[:, 0].clone(), persistent=False)  # (E,) node ids
        self.register_buffer("edge_child", edges[:, 1].clone(), persistent=False)
        kids = np.zeros((hierarchy.n_coarse, hierarchy.n_nodes), dtype=bool)
        for p, c in hierarchy.edges:
            kids[p, c] = True
        self.register_buffer("inner_children", torch.from_numpy(kids), persistent=False)  # (C, K)

    @property
    def paper_form(self) -> bool:
        """The paper's 2-level arithmetic applies (else the any-depth one)."""
        return self.hierarchy.is_two_level and not self.generic

    def children_max(self, nodes: torch.Tensor) -> torch.Tensor:
        """(..., B, K) node values → (..., B, C): each inner node's max over its children."""
        masked = nodes[..., None, :].masked_fill(~self.inner_children, float("-inf"))
        return masked.max(dim=-1).values

    def grouped_max(self, values: torch.Tensor) -> torch.Tensor:
        """(..., B, F) → (..., B, C): max over each coarse tag's children."""
        masked = values[..., None, :].masked_fill(self.membership == 0, float("-inf"))
        return masked.max(dim=-1).values

    def entry_losses(self, out: "HeadOutput", fine_targets, fine_mask, coarse_targets, coarse_mask
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of every entry, (..., B, F) and (..., B, C), 0 where unobserved: binary cross-entropy
        from the head's logits or log-probabilities where it has them (mcm: MCLoss)."""
        return (masked_bce_entries(out.fine_probs, fine_targets, fine_mask, out.fine_logits, out.fine_log_probs),
                masked_bce_entries(out.coarse_probs, coarse_targets, coarse_mask, out.coarse_logits, out.coarse_log_probs))

    paper_loss = True  # False: its loss is entry_losses at depth 2 too (mcm)

    def extra_loss(self, out: "HeadOutput") -> torch.Tensor | None:
        """A loss term beyond the two BCEs (weighted by ``alpha``); None for most heads."""
        return None

    explain_rule = "children"  # how a coarse decision is explained (hmic.models.explain's rules): its own classifier

    def explainer(self) -> Explainer:
        """How this head explains its coarse decisions, as data (stored in exported ONNX files too)."""
        return Explainer(self.explain_rule, self.hierarchy.membership)

    def explain(self, c: int, fine_probs: np.ndarray, attention: np.ndarray | None) -> Explanation:
        """Which fine tags carried coarse tag ``c`` for one window: fine_probs (F,), attention (F, C) or None."""
        return self.explainer().explain(c, fine_probs, attention)


class FineClassifier(Head):
    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.fine = Linear(dim, hierarchy.n_fine)


@register("flat")
class Flat(FineClassifier):
    """Baseline: fine classifier only (λ = 1); P_c is the grouped max of P_f at inference."""

    uses_coarse_loss = False

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        coarse_logits = self.grouped_max(logits)
        return HeadOutput(torch.sigmoid(logits), torch.sigmoid(coarse_logits), logits, coarse_logits)

    explain_rule = "max child"


class FineAndCoarseClassifier(FineClassifier):
    """A fine and a coarse linear classifier on the same embedding."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.coarse = Linear(dim, hierarchy.n_coarse)


@register("levelwise")
class LevelWise(FineAndCoarseClassifier):
    """Fig. 2(a): parallel fine and coarse linear classifiers tied by consistency loss items.

    Any depth: one linear classifier over the leaves and one over the inner nodes, the same function as one
    classifier per level (a linear map's outputs are independent), tied along every parent link."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        fl, cl = self.fine(z), self.coarse(z)
        return HeadOutput(torch.sigmoid(fl), torch.sigmoid(cl), fl, cl)

    def extra_loss(self, out: HeadOutput) -> torch.Tensor:
        """L_down + L_up (the project's reading of Krause & Müller 2022's loss items; need no labels).

        Any depth: L_down is the mean of relu(P_child − P_parent) over every parent link, L_up the mean of
        relu(P_node − max of its children's P) over the inner nodes (at depth 2 the same two terms)."""
        pf, pc = out.fine_probs.float(), out.coarse_probs.float()
        if self.paper_form:
            down = level_mean(F.relu(pf - pc[..., self.parent]))
            up = level_mean(F.relu(pc - self.grouped_max(pf)))
            return down + up
        p = torch.cat([pc, pf], dim=-1)
        down = level_mean(F.relu(p[..., self.edge_child] - p[..., self.edge_parent]))
        up = level_mean(F.relu(pc - self.children_max(p)))
        return down + up


@register("topdown")
class TopDown(FineAndCoarseClassifier):
    """Fig. 2(b): top-down soft tree, P_c = σ(z_c) and P_f = σ(z_f) · P_c[parent(f)] (any depth: the product along the path)."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        anc = hierarchy.ancestors_or_self()[:, : hierarchy.n_coarse].astype(np.float32)  # (K, C)
        self.register_buffer("inner_path", torch.from_numpy(anc[: hierarchy.n_coarse].copy()), persistent=False)
        self.register_buffer("leaf_path", torch.from_numpy(anc[hierarchy.n_coarse:].copy()), persistent=False)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        zf, zc = self.fine(z), self.coarse(z)
        if self.paper_form:
            log_pf = F.logsigmoid(zf) + F.logsigmoid(zc)[..., self.parent]
            return HeadOutput(torch.exp(log_pf), torch.sigmoid(zc), None, zc, fine_log_probs=log_pf)
        # Any depth: log P_node = Σ over its inner ancestors-or-self of log σ(z) (in a DAG every ancestor
        # once, a project choice): the product along the path, in log space.
        ls = F.logsigmoid(zc)
        log_pc = ls @ self.inner_path.T
        log_pf = F.logsigmoid(zf) + ls @ self.leaf_path.T
        return HeadOutput(torch.exp(log_pf), torch.exp(log_pc), None, None, fine_log_probs=log_pf,
                          coarse_log_probs=log_pc)


@register("gap")
class GroupedAverage(FineClassifier):
    """Fig. 2(c)1: grouped average pooling, P_c = mean of the children's P_f (recursively at any depth)."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.register_buffer("average", torch.from_numpy(hierarchy.average), persistent=False)  # (C, F)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        if self.paper_form:
            pc = pf @ (self.membership / self.membership.sum(dim=1, keepdim=True)).T
        else:  # any depth: the mean of the children's P, recursively (a linear map of the leaves)
            pc = pf @ self.average.T
        return HeadOutput(pf, pc, logits)

    explain_rule = "mean"


@register("gmp")
class GroupedMax(FineClassifier):
    """Fig. 2(c)3: grouped max pooling, P_c = max of the children's P_f (σ of the max child logit; any depth: of the leaves below)."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        cl = self.grouped_max(logits)
        return HeadOutput(torch.sigmoid(logits), torch.sigmoid(cl), logits, cl)

    explain_rule = "max child"


@register("lp")
class LinearProjection(FineClassifier):
    """Fig. 2(c)2: linear projection, P_c = softmax_F(A)ᵀ P_f with A learned and input-independent."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.projection = nn.Parameter(torch.zeros(hierarchy.n_fine, hierarchy.n_coarse))

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        weights = torch.softmax(self.projection, dim=-2)  # (F, C), softmax over the fine tags
        return HeadOutput(pf, pf @ weights, logits, attention=weights[..., None, :, :].expand(*pf.shape, -1))

    explain_rule = "attention"


@register("lp-linear")
class UnconstrainedProjection(FineClassifier):
    """Linear projection without the softmax: P_c = σ(Aᵀ P_f + b), A (F, C) and b learned, unconstrained."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.projection = Linear(hierarchy.n_fine, hierarchy.n_coarse)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        coarse_logits = self.projection(pf)
        return HeadOutput(pf, torch.sigmoid(coarse_logits), logits, coarse_logits)

    explain_rule = "projection"  # each fine tag's positive share of Aᵀ P_f (tags that push the coarse logit up)

    def explainer(self) -> Explainer:
        return Explainer(self.explain_rule, self.hierarchy.membership,
                         self.projection.weight.detach().float().cpu().numpy())  # (C, F)


@register("resatt")
class ResidualAttention(FineClassifier):
    """Fig. 2(d): attention, P_c = Wᵀ P_f with W = softmax over fine tags of Linear(Z) (no hierarchy prior).

    Attention logits = Linear_D→F·C(Z) reshaped (B, F, C); the map W is what Fig. 4 visualises. Any depth:
    W is (B, S, C) over the non-root nodes S (``Hierarchy.attention_sources``), each inner node attending
    over every node one level below it.
    """

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        sources = hierarchy.attention_sources
        self.attention = Linear(dim, len(sources) * hierarchy.n_coarse)
        depth = np.asarray(hierarchy.depth)
        allowed = depth[list(sources)][:, None] == depth[: hierarchy.n_coarse][None, :] + 1  # (S, C)
        self.register_buffer("sources", torch.as_tensor(sources, dtype=torch.long), persistent=False)
        self.register_buffer("blocked", torch.from_numpy(~allowed), persistent=False)
        inner_depth = depth[: hierarchy.n_coarse]
        self.register_buffer("inner_levels", torch.from_numpy(
            np.stack([inner_depth == d for d in range(int(inner_depth.max()), -1, -1)])), persistent=False)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        a = self.attention(z)
        a = a.view(*a.shape[:-1], len(self.sources), self.hierarchy.n_coarse)
        if self.paper_form:
            w = torch.softmax(a, dim=-2)
            return HeadOutput(pf, torch.einsum("...fc,...f->...c", w, pf), logits, attention=w)
        # Any depth: node c attends over the nodes one level below it (all of them: no hierarchy prior), and
        # the inner nodes are computed bottom-up, a level at a time.
        w = torch.softmax(a.masked_fill(self.blocked, float("-inf")), dim=-2)
        pc = pf.new_zeros(*pf.shape[:-1], self.hierarchy.n_coarse)
        for level in self.inner_levels:
            below = torch.cat([pc, pf], dim=-1)[..., self.sources]
            pc = torch.where(level, torch.einsum("...sc,...s->...c", w, below), pc)
        return HeadOutput(pf, pc, logits, attention=w)

    explain_rule = "attention"


@register("mcm")
class MaxConstraint(Head):
    """C-HMCNN's max constraint module: every node its own score, P_node = max over itself and its descendants; MCLoss.

    Giunchiglia & Lukasiewicz (NeurIPS 2020), reimplemented from the paper (``hmic.models.constraint``):
    a linear score per leaf and per inner node; a node's logit is the max of the logits of the nodes
    below it and its own, so a parent is never below its child (coherent by construction, trees and
    DAGs alike); trained with MCLoss instead of plain BCE, the levels weighted as every head's. Built with
    ``own_inner_scores=False`` it is gmp (the inner nodes only pool their leaves) trained with MCLoss.
    """

    explain_rule = "max child"
    own_inner_scores = True
    paper_loss = False

    def __init__(self, dim: int, hierarchy: Hierarchy, own_inner_scores: bool | None = None):
        super().__init__(dim, hierarchy)
        if own_inner_scores is not None:
            self.own_inner_scores = own_inner_scores
        self.fine = Linear(dim, hierarchy.n_fine)
        if self.own_inner_scores:
            self.coarse = Linear(dim, hierarchy.n_coarse)
        scored = np.ones(hierarchy.n_nodes, dtype=bool)
        scored[: hierarchy.n_coarse] = self.own_inner_scores
        reach = hierarchy.descendants_or_self & scored[None, :]
        self.register_buffer("reach", torch.from_numpy(reach.copy()), persistent=False)  # (K, K)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        from hmic.models.constraint import constrained

        zf = self.fine(z)
        zc = self.coarse(z) if self.own_inner_scores else zf.new_zeros(*zf.shape[:-1], self.hierarchy.n_coarse)
        h = torch.cat([zc, zf], dim=-1)
        out = constrained(h, self.reach)
        c = self.hierarchy.n_coarse
        # contiguous: σ of a strided slice may differ from σ of the same values laid out densely in the last
        # bit (CPU kernels vectorise by layout); dense, without own inner scores it is gmp's forward exactly
        fine, coarse = out[..., c:].contiguous(), out[..., :c].contiguous()
        return HeadOutput(torch.sigmoid(fine), torch.sigmoid(coarse), fine, coarse, node_scores=h)

    def entry_losses(self, out: HeadOutput, fine_targets, fine_mask, coarse_targets, coarse_mask):
        from hmic.models.constraint import constrained_loss

        per = constrained_loss(out.node_scores, torch.cat([coarse_targets, fine_targets], dim=-1),
                               self.reach, torch.cat([coarse_mask, fine_mask], dim=-1))
        c = self.hierarchy.n_coarse
        return per[..., c:], per[..., :c]


@register("audioset")
class AudioSetClassifier(Head):
    """PANNs' AudioSet classifier (fc_audioset) through a class → tag mapping: P_f = max of its classes, P_c = max of the children.

    The rows of the checkpoint's ``fc_audioset`` that the mapping (``hmic.data.audioset``) names are
    kept: ``classes`` (K,) holds their AudioSet row and ``class_fine`` (K,) the fine tag each one feeds
    (both saved with the weights, so a run's checkpoint knows its mapping). A fine tag's logit is the
    max of its classes' logits (σ is monotone: its probability is the max of theirs), a coarse tag's the
    max of its children's, as in gmp. Built without weights (``build_head``), it holds the shipped
    mapping's rows for the hierarchy (none when the mapping does not cover it) with random weights;
    ``load_classifier`` puts in the checkpoint's, and loading a saved state takes the state's rows.
    """

    ready_untrained = True
    explain_rule = "max child"

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        from hmic.data.audioset import load_mapping

        try:
            rows, fine_of = load_mapping().rows_for(hierarchy)
        except Exception:  # another vocabulary: its rows come with load_classifier or a saved state
            rows, fine_of = [], []
        self.dim = dim
        self._set_rows(rows, fine_of)

    def _set_rows(self, rows, fine_of, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
        with warnings.catch_warnings():  # no rows yet (a vocabulary the shipped mapping does not cover)
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.fc_audioset = Linear(self.dim, len(rows))
        if weight is not None:
            with torch.no_grad():
                self.fc_audioset.weight.copy_(weight)
                self.fc_audioset.bias.copy_(bias)
        self.register_buffer("classes", torch.as_tensor(rows, dtype=torch.long).reshape(-1))
        self.register_buffer("class_fine", torch.as_tensor(fine_of, dtype=torch.long).reshape(-1))

    def load_classifier(self, checkpoint: str, mapping_file: str | None = None) -> None:
        """The rows of ``checkpoint``'s fc_audioset that ``mapping_file`` (default: the shipped mapping) names."""
        from hmic.data.audioset import load_mapping
        from hmic.errors import HmicError
        from hmic.models.panns import read_audioset_classifier

        rows, fine_of = load_mapping(mapping_file).rows_for(self.hierarchy)
        weight, bias = read_audioset_classifier(checkpoint)
        if weight.shape[1] != self.dim:
            raise HmicError(f"{checkpoint}: fc_audioset reads a {weight.shape[1]}-d embedding, this backbone gives "
                            f"{self.dim}-d; the audioset model needs the backbone of that checkpoint (--arch cnn14)")
        index = torch.as_tensor(rows, dtype=torch.long)
        self._set_rows(rows, fine_of, weight[index], bias[index])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rows = state_dict.get(prefix + "classes")
        if rows is not None and rows.shape != self.classes.shape:  # a saved head of another mapping: its shapes
            self._set_rows(rows, state_dict.get(prefix + "class_fine", torch.zeros_like(rows)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def class_mask(self) -> torch.Tensor:
        """(F, K) True where class k feeds fine tag f."""
        return self.class_fine[None, :] == torch.arange(self.hierarchy.n_fine, device=self.class_fine.device)[:, None]

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fc_audioset(z)  # (..., B, K)
        fine = logits[..., None, :].masked_fill(~self.class_mask(), float("-inf")).max(dim=-1).values
        coarse = self.grouped_max(fine)
        return HeadOutput(torch.sigmoid(fine), torch.sigmoid(coarse), fine, coarse, class_probs=torch.sigmoid(logits))

    def class_names(self) -> list[str]:
        """The AudioSet display name of each kept row (K)."""
        from hmic.data.audioset import audioset_classes

        names = audioset_classes()
        return [names[int(r)] for r in self.classes]

    def fine_sources(self) -> tuple[list[str], np.ndarray]:
        """What each fine tag is the max of: (the K class names, the fine tag of each (K,))."""
        return self.class_names(), self.class_fine.cpu().numpy()


def build_head(method: str, dim: int, hierarchy: Hierarchy) -> Head:
    return head_class(method)(dim, hierarchy)


# ----------------------------------------------------------------------------------------------
# Loss over observed entries only, always in float32


def _bce_entries(probs, targets, logits, log_probs):
    if logits is not None:
        return F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    if log_probs is not None:
        lp = log_probs.float().clamp(max=-EPS)
        return -(targets * lp + (1 - targets) * torch.log(-torch.expm1(lp)))
    return F.binary_cross_entropy(probs.float().clamp(EPS, 1 - EPS), targets, reduction="none")


def masked_bce_entries(probs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                       logits: torch.Tensor | None = None, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Each entry's binary cross-entropy (..., B, T), 0 where unobserved (mask False)."""
    shape = probs.shape
    targets, mask = targets.float().expand(shape), mask.bool().expand(shape)
    return _bce_entries(probs, targets, logits, log_probs) * mask


def masked_bce_loss(probs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    logits: torch.Tensor | None = None, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of one level: mean binary cross-entropy over observed entries (mask True), in
    torch, from the head's logits or log-probabilities where it has them (exact near 0 and 1). 0 if
    nothing is observed. Per run for stacked inputs (..., B, T): targets and mask broadcast against the
    probabilities. (The validation loss of saved probabilities is ``hmic.evaluation.metrics.masked_bce``,
    with the same arguments in the same order.)"""
    shape = probs.shape
    targets, mask = targets.float().expand(shape), mask.bool().expand(shape)
    per = _bce_entries(probs, targets, logits, log_probs)
    n = mask.sum(dim=RUN_AXES)
    return (per * mask).sum(dim=RUN_AXES) / n.clamp(min=1)


def level_weight_vector(hierarchy: Hierarchy, lam, level_weights=None) -> torch.Tensor:
    """The loss weight of each level, top first, as a tensor (..., L): ``level_weights`` (one vector, or
    one per stacked run) if given, else what λ (a float, or a tensor (...,) of one per run) stands for
    (``Hierarchy.level_weights``)."""
    if level_weights is not None:
        return torch.as_tensor(level_weights, dtype=torch.float32)
    lam = torch.as_tensor(lam, dtype=torch.float32)
    n = hierarchy.n_levels
    if n == 1:
        return torch.ones_like(lam)[..., None]
    return torch.stack([(1 - lam) / (n - 1)] * (n - 1) + [lam], dim=-1)


def hierarchical_loss(out: HeadOutput, head: Head, fine_targets, fine_mask, coarse_targets, coarse_mask,
                      lam: float, alpha: float = 1.0, level_weights=None) -> torch.Tensor:
    """L = λ·BCE_fine + (1 − λ)·BCE_coarse (+ α·the head's extra term); a head without coarse loss uses BCE_fine.
    ``lam`` may be a tensor of one λ per stacked run.

    Any depth (or ``level_weights``, one weight per level top first, or one vector per stacked run):
    L = Σ_d w_d · (the mean entry loss over the observed nodes of level d) (``hmic.models.constraint.
    level_weighted_loss``); a head without coarse loss trains its leaves alone (the mean over them)."""
    h = head.hierarchy
    if not (head.paper_form and head.paper_loss and level_weights is None):
        fine_per, coarse_per = head.entry_losses(out, fine_targets, fine_mask, coarse_targets, coarse_mask)
        if not head.uses_coarse_loss:
            mask = fine_mask.bool().expand(fine_per.shape)
            total = fine_per.sum(dim=RUN_AXES) / mask.sum(dim=RUN_AXES).clamp(min=1)
        else:
            from hmic.models.constraint import level_weighted_loss

            per = torch.cat([coarse_per, fine_per], dim=-1)
            mask = torch.cat([coarse_mask.bool().expand(coarse_per.shape), fine_mask.bool().expand(fine_per.shape)], dim=-1)
            weights = level_weight_vector(h, lam, level_weights).to(per.device)
            total = level_weighted_loss(per, mask, h.depth, weights)
    elif not head.uses_coarse_loss:
        total = masked_bce_loss(out.fine_probs, fine_targets, fine_mask, out.fine_logits, out.fine_log_probs)
    else:
        fine = masked_bce_loss(out.fine_probs, fine_targets, fine_mask, out.fine_logits, out.fine_log_probs)
        coarse = masked_bce_loss(out.coarse_probs, coarse_targets, coarse_mask, out.coarse_logits)
        total = lam * fine + (1 - lam) * coarse
    if alpha:
        extra = head.extra_loss(out)
        if extra is not None:
            total = total + alpha * extra
    return total
