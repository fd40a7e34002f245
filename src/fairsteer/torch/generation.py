r"""Steering a language model towards a desired output, equally for every group.

THEORY section 8. Hidden states :math:`h \in \mathbb{R}^d` of one decoder layer
are grouped into cells :math:`F[a, y] = N(\mu_{a,y}, S_{a,y})` by group ``a``
(who or what the prompt is about) and a binary concept ``y`` (0 = as is,
1 = desired). A steering of group ``a`` is an affine map
:math:`S_a(h) = A_a h + b_a`, applied with strength :math:`\alpha` as

.. math:: h \mapsto h + \alpha\,(S_a(h) - h),

the displacement interpolation between the two laws for an OT map
(:math:`\alpha = 0` is the identity, :math:`\alpha = 1` the full map,
:math:`\alpha > 1` extrapolates along the same straight lines).

Methods (:data:`METHODS`):

``pooled-vector``
    ActAdd / CAA: :math:`S(h) = h + v`, :math:`v = \bar h_{y=1} - \bar h_{y=0}`
    pooled over groups (sample means over all rows of each concept).
``group-vectors``
    :math:`S_a(h) = h + \mu_{a,1} - \mu_{a,0}`.
``group-ot``
    Gaussian OT from :math:`F[a,0]` to :math:`F[a,1]` (concept transport):
    :math:`S_a(h) = \mu_{a,1} + A_a (h - \mu_{a,0})`,
    :math:`A_a = S_{a,0}^{-1/2} (S_{a,0}^{1/2} S_{a,1} S_{a,0}^{1/2})^{1/2} S_{a,0}^{-1/2}`.
``ef-affirmative`` / ``ef-all-subgroups``
    Solve the nearest ideal model of the cells (THEORY 4a / 4b) and transport
    :math:`F[a,0]` onto the IDEAL desired cell
    :math:`\tilde F[a,1] = N(G_a \nu_1 + t_a, G_a \Omega_1 G_a^T)`. Affirmative
    action keeps, by default, the group where steering works best in
    representation space: the largest Mahalanobis separation
    :math:`\Delta_a^2 = (\mu_{a,1}-\mu_{a,0})^T \bar S_a^{-1} (\mu_{a,1}-\mu_{a,0})`
    with :math:`\bar S_a` the group's pooled within-concept covariance.

Why EF equalises: the steered states of group ``a`` have law
:math:`\tilde F[a,1]`, the image under :math:`z \mapsto G_a z + t_a` of the
reference's desired law, and the ideal posterior satisfies
:math:`\tilde P(Y=1 \mid G_a z + t_a, a) = P_{ref}(Y=1 \mid z)`; so for every
threshold the Bayes detector of the ideal model accepts the same share of
steered states in every group.

What is well-posed. With d in the hundreds (576 for SmolLM2) and a few
thousand strongly correlated token states per cell, raw covariances are
ill-conditioned and the OT map's :math:`S^{-1/2}` amplifies noise: fit the
cells with shrinkage (``shrinkage="oas"``). The EF solve with per-concept
covariances is a non-convex trust-region Newton search over :math:`d^2`
parameters per group (about 24 s at d = 100, benchmarks/bench_engine.py), so
for hidden states use
``covariance="shared"`` (one covariance per group, the closed form of
THEORY 4a) for the solve; the map's SOURCE cell may still be the per-concept
moments of the undesired states (``source=``), so that on the fitting sample
the steered states have exactly the target mean, and exactly its covariance
when the source covariance is the unshrunk sample covariance. With shared
covariance in both cells, ``group-ot`` reduces to ``group-vectors``
(:math:`A_a = I`).

Which positions are steered. Inside :func:`steer_generation` the hook
changes the layer's output at every position whose state produces a
generated token: the last prompt position (its state predicts the first new
token) and every generated token's position; earlier prompt positions are
never changed. With ``generate()`` the states of one row are therefore in
one-to-one correspondence with its generated tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from fairsteer.errors import InputError
from fairsteer.fit import fit_model
from fairsteer.linalg import gaussian_ot_matrix
from fairsteer.model import GaussianModel
from fairsteer.solve import Solution, solve

__all__ = [
    "METHODS",
    "GroupSteering",
    "StateRecorder",
    "build_steering",
    "concept_posterior",
    "decoder_layer",
    "fit_cells",
    "separation",
    "steer_generation",
]

Array = NDArray[np.float64]
METHODS = ("pooled-vector", "group-vectors", "group-ot", "ef-affirmative", "ef-all-subgroups")
CONCEPTS = (0, 1)  # 0 = as is, 1 = desired


def fit_cells(
    states: ArrayLike,
    concept: ArrayLike,
    groups: ArrayLike,
    *,
    covariance: str = "shared",
    shrinkage: float | str | None = "oas",
    group_labels: Sequence[Hashable] | None = None,
) -> GaussianModel:
    r"""Fit the cells :math:`F[a, y] = N(\mu_{a,y}, S_{a,y})` of hidden states.

    Parameters
    ----------
    states : array-like of shape (n, d)
        Hidden states (rows may be token states of many sequences).
    concept : array-like of shape (n,)
        0 (as is) or 1 (desired) per row.
    groups : array-like of shape (n,)
        Group of every row.
    covariance : {"shared", "per-class"}
        One covariance per group (pooled within concept) or one per cell.
    shrinkage : None, float or "oas"
        Shrinkage towards a scaled identity (:func:`fairsteer.model.shrink_covariance`);
        needed when d is not small against the rows per cell.
    group_labels : sequence, optional
        Group order (default sorted).

    Returns
    -------
    GaussianModel
        Classes ``(0, 1)``; priors are the row shares of the cells.
    """
    y = np.asarray(concept)
    if not np.isin(y, CONCEPTS).all():
        raise InputError("concept labels must be 0 (as is) or 1 (desired)")
    return fit_model(
        states,
        y.astype(int),
        groups,
        covariance=covariance,
        shrinkage=shrinkage,
        group_labels=group_labels,
        class_labels=CONCEPTS,
    )


def separation(cells: GaussianModel) -> Array:
    r"""Mahalanobis distance between each group's two cells, shape (m,).

    :math:`\Delta_a = \sqrt{(\mu_{a,1}-\mu_{a,0})^T \bar S_a^{-1} (\mu_{a,1}-\mu_{a,0})}`
    with :math:`\bar S_a = \sum_y \pi_{a,y} S_{a,y}`. With shared covariance the
    ideal models are exactly those with equal :math:`\Delta_a` (THEORY 3).
    """
    pi = cells.class_priors
    out = np.empty(cells.n_groups)
    for a in range(cells.n_groups):
        S = np.einsum("k,kde->de", pi[a], cells.covariances[a])
        diff = cells.means[a, 1] - cells.means[a, 0]
        out[a] = np.sqrt(diff @ np.linalg.solve(S, diff))
    return out


@dataclass(frozen=True, eq=False)
class GroupSteering:
    r"""Per-group affine steering maps :math:`S_a(h) = A_a h + b_a`.

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    groups : tuple
        Group names, in the order of the arrays.
    linear : ndarray (m, d, d) or None
        :math:`A_a`; None means the identity (vector methods).
    offset : ndarray (m, d)
        :math:`b_a`.
    target_means, target_covariances : ndarray (m, d), (m, d, d)
        The law the map sends the source cell :math:`F[a,0]` to.
    solution : Solution or None
        The nearest ideal model (EF methods).
    """

    method: str
    groups: tuple[Hashable, ...]
    linear: Array | None
    offset: Array
    target_means: Array
    target_covariances: Array
    solution: Solution | None = None

    @property
    def n_features(self) -> int:
        return int(self.offset.shape[1])

    def codes(self, groups: Sequence[Hashable | None]) -> NDArray[np.intp]:
        """Index of every entry's group; ``None`` (not steered) gives -1."""
        index = {str(g): k for k, g in enumerate(self.groups)}
        out = np.empty(len(groups), dtype=np.intp)
        for r, g in enumerate(groups):
            if g is None:
                out[r] = -1
            elif str(g) in index:
                out[r] = index[str(g)]
            else:
                raise InputError(f"unknown group {g!r}; the steering's groups are {self.groups}")
        return out

    def apply(self, states: ArrayLike, groups: Sequence[Hashable | None], alpha: float) -> Array:
        r"""Steer rows of ``states`` (n, d): :math:`h + \alpha (S_a(h) - h)` (numpy)."""
        H = np.asarray(states, dtype=np.float64)
        if H.ndim != 2 or H.shape[1] != self.n_features:
            raise InputError(f"states must have shape (n, {self.n_features}), got {H.shape}")
        codes = self.codes(groups)
        if codes.size != H.shape[0]:
            raise InputError(f"{H.shape[0]} states but {codes.size} groups")
        out = H.copy()
        for a in np.unique(codes[codes >= 0]):
            rows = codes == a
            image = H[rows] if self.linear is None else H[rows] @ self.linear[a].T
            out[rows] = H[rows] + alpha * (image + self.offset[a] - H[rows])
        return out


def _ot(source: GaussianModel, a: int, mean: Array, cov: Array) -> tuple[Array, Array]:
    """Linear part and offset of the OT map from source cell (a, 0) to N(mean, cov)."""
    A = gaussian_ot_matrix(source.covariances[a, 0], cov)
    return A, mean - A @ source.means[a, 0]


def build_steering(
    cells: GaussianModel,
    method: str,
    *,
    source: GaussianModel | None = None,
    reference: Hashable | None = None,
    seed: int = 0,
) -> GroupSteering:
    r"""Steering maps of one method (THEORY 8).

    Parameters
    ----------
    cells : GaussianModel
        Fitted cells (classes ``(0, 1)``, :func:`fit_cells`). The EF methods
        solve the nearest ideal model of these cells
        (:func:`fairsteer.solve.solve`); use ``covariance="shared"`` for
        hidden-state dimensions.
    method : str
        One of :data:`METHODS`.
    source : GaussianModel, optional
        Cells whose undesired cell :math:`F[a,0]` the OT maps (``group-ot``,
        EF) start from; default ``cells``. Passing per-concept moments of the
        same rows transports the actual law of the undesired states, so that
        on the fitting sample the steered states have exactly the target
        mean (and covariance, if unshrunk), while the ideal target still comes
        from ``cells``. ``group-ot`` takes its targets :math:`F[a,1]` from
        ``source`` too.
    reference : group name, optional
        ``ef-affirmative`` only: the group kept in place. Default: the group
        with the largest :func:`separation` (where steering works best).
    seed : int
        Seed of the solver's random starts.

    Returns
    -------
    GroupSteering
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if tuple(cells.classes) != CONCEPTS:
        raise InputError(f"cells must have classes {CONCEPTS}, got {cells.classes}")
    src = cells if source is None else source
    if src.means.shape != cells.means.shape or tuple(map(str, src.groups)) != tuple(
        map(str, cells.groups)
    ):
        raise InputError("source must have the same groups, concepts and d as cells")
    if reference is not None and method != "ef-affirmative":
        raise InputError("reference applies to method 'ef-affirmative' only")
    m, _, d = cells.means.shape
    linear: Array | None = None
    solution = None
    if method in ("pooled-vector", "group-vectors"):
        if method == "pooled-vector":
            # pooled sample means: cell means weighted by their row counts (priors)
            q = cells.priors
            mean = (q[..., None] * cells.means).sum(0) / q.sum(0)[:, None]
            offset = np.broadcast_to(mean[1] - mean[0], (m, d)).copy()
        else:
            offset = cells.means[:, 1] - cells.means[:, 0]
        target_means = src.means[:, 0] + offset
        target_cov = src.covariances[:, 0].copy()
    else:
        if method == "group-ot":
            target_means, target_cov = src.means[:, 1].copy(), src.covariances[:, 1].copy()
        else:
            if method == "ef-affirmative" and reference is None:
                reference = cells.groups[int(np.argmax(separation(cells)))]
            solution = solve(cells, method.removeprefix("ef-"), reference=reference, seed=seed)
            target_means = solution.ideal.means[:, 1].copy()
            target_cov = np.array(solution.ideal.covariances[:, 1])
        maps = [_ot(src, a, target_means[a], target_cov[a]) for a in range(m)]
        linear = np.stack([A for A, _ in maps])
        offset = np.stack([b for _, b in maps])
    return GroupSteering(
        method, tuple(cells.groups), linear, offset, target_means, target_cov, solution
    )


def concept_posterior(model: GaussianModel, states: ArrayLike, groups: ArrayLike) -> Array:
    r"""Group-aware posterior :math:`P(Y=1 \mid h, a)` of a model with classes (0, 1).

    Under an ideal model (``solution.ideal``) the law of this posterior on
    EF-steered states is the same in every group (THEORY 8), so the Bayes
    detector ``posterior >= c`` accepts equal shares for every ``c``.
    """
    from fairsteer.bayes import posterior

    return posterior(model, states, groups)[:, 1]


def decoder_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The ``layer``-th decoder block of a transformers causal LM or base model.

    Looks for ``model.model.layers`` (``*ForCausalLM``), ``model.layers``
    (base Llama-like models) or ``model.transformer.h`` (GPT-2 style).
    """
    for path in ("model.layers", "layers", "transformer.h"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            if not -len(obj) <= layer < len(obj):
                raise InputError(f"layer {layer} out of range: the model has {len(obj)} layers")
            return obj[layer]
    raise InputError("cannot find the decoder layers (model.model.layers or model.layers)")


class StateRecorder:
    """Steered (or, without steering, plain) layer outputs at generation positions.

    After the block, :attr:`states` is a float32 tensor (batch, L, d): entry
    ``[:, k]`` is the state at padded position ``prompt_length - 1 + k``, the
    one that produced generated token ``k``.
    """

    def __init__(self) -> None:
        self._by_pos: dict[int, torch.Tensor] = {}
        self.prompt_length: int | None = None

    def _add(self, start: int, h: torch.Tensor) -> None:
        for j in range(h.shape[1]):
            self._by_pos[start + j] = h[:, j].detach().to("cpu", torch.float32)

    @property
    def states(self) -> torch.Tensor:
        if not self._by_pos:
            raise InputError("nothing was recorded: no forward pass ran inside the block")
        return torch.stack([self._by_pos[p] for p in sorted(self._by_pos)], dim=1)


def _cache_length(module: torch.nn.Module, kwargs: dict[str, Any]) -> int | None:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return None
    idx = getattr(getattr(module, "self_attn", None), "layer_idx", 0) or 0
    return int(cache.get_seq_length(idx))


@contextlib.contextmanager
def steer_generation(
    model: torch.nn.Module,
    layer: int | torch.nn.Module,
    steering: GroupSteering | None,
    groups: Sequence[Hashable | None],
    *,
    alpha: float = 1.0,
    prompt_length: int | None = None,
    record: bool = False,
) -> Iterator[StateRecorder | None]:
    r"""Steer one decoder layer's output at the generation positions of each row.

    Inside the block, for a row of group ``a`` the layer output :math:`h` at
    every padded position :math:`p \ge P - 1` (``P`` = padded prompt length)
    becomes :math:`h + \alpha (S_a(h) - h)`; rows whose group is ``None`` and
    positions :math:`p < P - 1` are left unchanged, and so is every other layer.

    Parameters
    ----------
    model : torch.nn.Module
        A transformers causal LM (or its base model).
    layer : int or torch.nn.Module
        Decoder-block index (:func:`decoder_layer`) or the module itself. The
        block's output is ``hidden_states[layer + 1]`` of transformers.
    steering : GroupSteering or None
        None records without steering.
    groups : sequence
        Group of each row of the batch (``None``: do not steer that row).
    alpha : float
        Strength; 0 is the identity.
    prompt_length : int, optional
        Padded prompt length ``P`` (left padding, as ``generate`` needs).
        Default: the sequence length of the first forward pass in the block
        (the prefill of ``generate``).
    record : bool
        Yield a :class:`StateRecorder` of the (steered) states at the
        generation positions.

    Notes
    -----
    Positions are absolute padded indices: the start of each call is the
    length of the key-value cache passed to the layer (``generate`` with a
    cache), or 0 for a call without cache (a full forward pass, e.g. scoring
    prompt + continuation with ``prompt_length`` given). A call of length 1
    without cache continues where the previous call ended.

    Examples
    --------
    >>> with steer_generation(lm, 15, steering, ["horror", "comedy"], alpha=0.5):  # doctest: +SKIP
    ...     out = lm.generate(**batch, max_new_tokens=40)
    """
    module = decoder_layer(model, layer) if isinstance(layer, int) else layer
    codes = None
    if steering is not None:
        codes = torch.as_tensor(steering.codes(groups))
        lin = None if steering.linear is None else torch.as_tensor(steering.linear)
        off = torch.as_tensor(steering.offset)
    recorder = StateRecorder() if record else None
    state: dict[str, Any] = {"P": prompt_length, "next": 0, "start": 0}

    def pre_hook(mod: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        T = h.shape[1]
        start = _cache_length(mod, kwargs)
        if start is None:
            start = 0 if T > 1 else state["next"]
        if state["P"] is None:
            state["P"] = start + T
        state["start"], state["next"] = start, start + T

    def steer(h: torch.Tensor) -> torch.Tensor:
        if h.shape[0] != len(groups):
            raise InputError(f"batch has {h.shape[0]} rows but {len(groups)} groups were given")
        first = max(0, state["P"] - 1 - state["start"])  # local index of position P - 1
        if first >= h.shape[1]:
            return h
        out = h
        if steering is not None and alpha != 0:
            z = h[:, first:].to(torch.float64)
            new = z.clone()
            for a in torch.unique(codes[codes >= 0]).tolist():
                rows = (codes == a).to(z.device)
                x = z[rows]
                image = x if lin is None else x @ lin[a].to(z.device).T
                new[rows] = x + alpha * (image + off[a].to(z.device) - x)
            out = h.clone()
            out[:, first:] = new.to(h.dtype)
        if recorder is not None:
            recorder.prompt_length = state["P"]
            recorder._add(state["start"] + first, out[:, first:])
        return out

    def hook(_mod: torch.nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (steer(output[0]), *output[1:])
        return steer(output)

    pre = module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
    post = module.register_forward_hook(hook, prepend=True)
    try:
        yield recorder
    finally:
        pre.remove()
        post.remove()
