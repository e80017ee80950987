"""Closed-form multi-way alignment: every modality mapped into one shared space at once.

Three methods of multi-way representation alignment (Achara et al., 2026, arXiv 2602.06205),
each with one map per modality (cost linear in the number of modalities):

* ``cca``: multi-set canonical correlation analysis (the MAXVAR generalisation): the leading
  eigenvectors of the block covariance of the whitened views, which is the SVD of the
  concatenated whitened views; with two modalities it is ordinary CCA (:func:`cca_state`);
* ``gpa``: Generalized Procrustes Analysis: one orthogonal map per modality into a "universe",
  iterated as *universe = mean of the mapped views; each map = Procrustes onto the universe*;
* ``gcpa``: GPA followed by one correction shared by every modality, fitted in closed form on
  the universe residuals (:func:`residual_correction_state`).

Missing modalities. Each modality's statistics (normalisation, covariance, whitening) come from
the rows where it is present. ``cca`` estimates each cross-covariance block on the rows where
that *pair* is present, so a row lacking one modality still informs the others' blocks; with
every modality present this is exactly the SVD of the concatenated whitened views. ``gpa``
averages each row's universe over the modalities present in that row and fits each map on the
rows where its modality is present, among the rows with at least two modalities (a row with one
modality pulls the universe onto itself and says nothing about the maps).

Pre-processing (all three): each modality is normalised with its own statistics (standard
scaling, L2 or nothing, as in :mod:`vallayz.baselines`) and divided by its root mean squared
row norm, so every modality weighs the same in the universe whatever its width; narrower
modalities are zero-padded to the widest (the GPA universe's dimension).

The maths are pure functions returning state dicts; :class:`MultiWayAligner` stores the state
as buffers, implements the :class:`~vallayz.method.Method` contract and saves like a model
(safetensors + JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from vallayz.baselines import NORMALISATIONS, denormalise, normalisation_state, normalise
from vallayz.functional import mean_over_present
from vallayz.method import Capabilities
from vallayz.types import Batch

MULTIWAY_METHODS = ("cca", "gpa", "gcpa")
# Ridge added to each covariance before whitening, as a fraction of its mean eigenvalue
# (trace / width): with as many dimensions as rows a covariance is singular, and an
# unregularised CCA finds perfect and meaningless correlations. Chosen on the emoji validation
# split (1,280-d image and 384-d text features, ~1,070 training rows; R@1 over the split):
# 0.01 / 0.1 / 0.3 / 1 / 3 / 10 gave image→text 0.176 / 0.216 / 0.242 / 0.248 / 0.255 / 0.255
# and text→image 0.183 / 0.229 / 0.235 / 0.268 / 0.281 / 0.268.
DEFAULT_CCA_RIDGE = 1.0
# Ridge of the GCPA correction, as a fraction of the mean eigenvalue of the stacked universe
# covariance; it shrinks the correction towards none (plain GPA).
DEFAULT_CORRECTION_RIDGE = 1e-3
GPA_ITERATIONS = 100
# GPA stops when the dispersion around the universe falls by less than this fraction.
GPA_TOLERANCE = 1e-7
SCHEMA_VERSION = 1


def _check_views(views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None) -> None:
    if len(views) < 2:
        raise ValueError(f"multi-way alignment needs at least 2 modalities, got {list(views)}")
    rows = {x.shape[0] for x in views.values()}
    if any(x.dim() != 2 for x in views.values()) or len(rows) != 1:
        shapes = {m: tuple(x.shape) for m, x in views.items()}
        raise ValueError(f"views must be row-aligned [N, d_m] matrices with one N, got {shapes}")
    for name in present or {}:
        if name not in views:
            raise ValueError(f"a presence mask is given for {name!r}, which has no view")


def _mask(views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None, name: str) -> Tensor:
    x = views[name]
    if present is None or name not in present:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return present[name].to(device=x.device, dtype=torch.bool)


def inverse_sqrt(matrix: Tensor, ridge: float = 0.0) -> Tensor:
    """``(C + ridge · tr(C)/d · I)^(-1/2)`` of a symmetric positive semi-definite ``C``.

    Raises:
        ValueError: if the regularised matrix is singular (zero ridge on a singular ``C``).

    Shape:
        ``[d, d]`` → ``[d, d]``.
    """
    d = matrix.shape[0]
    scale = float(matrix.diagonal().sum()) / d
    values, vectors = torch.linalg.eigh(matrix + ridge * scale * torch.eye(d, dtype=matrix.dtype))
    if float(values.min()) <= 1e-12 * max(float(values.max()), 1e-300):
        raise ValueError(
            "a covariance is singular (fewer rows than dimensions, or constant dimensions); "
            "pass a positive ridge"
        )
    return (vectors * values.rsqrt()) @ vectors.T


def cca_state(x: Tensor, y: Tensor, ridge: float = DEFAULT_CCA_RIDGE) -> dict[str, Tensor]:
    """Canonical correlation analysis of two paired views, by the SVD of the whitened
    cross-covariance ``Cxx^(-1/2) Cxy Cyy^(-1/2) = U Σ Vᵀ``.

    Each covariance gets ``ridge · tr(C)/d`` on its diagonal before whitening. With
    ``ridge = 0`` the canonical variates ``(x − mean_x) @ x_projection`` have identity covariance
    and their cross-covariance with ``y``'s is ``diag(correlations)``.

    Returns:
        ``x_mean``, ``y_mean``; ``x_projection``, ``y_projection`` (canonical directions, one
        column per component); ``correlations``, sorted in decreasing order, in ``[0, 1]``.

    Shape:
        x ``[N, d_x]``, y ``[N, d_y]`` → means ``[d_x]``, ``[d_y]``; projections ``[d_x, k]``,
        ``[d_y, k]``; correlations ``[k]``, ``k = min(d_x, d_y)``.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(
            f"cca needs paired views x [N, d_x] and y [N, d_y] with one N >= 2, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n = x.shape[0]
    wx = inverse_sqrt(xc.T @ xc / n, ridge)
    wy = inverse_sqrt(yc.T @ yc / n, ridge)
    u, s, vh = torch.linalg.svd(wx @ (xc.T @ yc / n) @ wy, full_matrices=False)
    return {
        "x_mean": x_mean,
        "y_mean": y_mean,
        "x_projection": wx @ u,
        "y_projection": wy @ vh.T,
        "correlations": s.clamp(0.0, 1.0),
    }


def mcca_state(
    views: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None = None,
    ridge: float = DEFAULT_CCA_RIDGE,
    components: int | None = None,
) -> dict[str, Tensor]:
    """Multi-set CCA (MAXVAR): the leading eigenvectors of the block covariance ``K`` of the
    whitened views, ``K_ab = W_a C_ab W_b`` with ``W_m = (C_mm + ridge · tr/d · I)^(-1/2)``
    and ``K_mm = I``.

    With ``ridge = 0`` and every view present on every row, ``K = X̃ᵀX̃ / N`` for the
    concatenated whitened views ``X̃``, so its eigenvectors are the right singular vectors of
    ``X̃``; with a ridge, ``K_mm = I`` (rather than ``W_m C_mm W_m``) makes two modalities give
    exactly ridge-regularised CCA (:func:`cca_state`). Each mean and ``C_mm`` is taken over the
    rows where ``m`` is present, each ``C_ab`` over the rows where both are.
    Each eigenvector's block ``v_m`` gives ``m``'s direction ``W_m v_m``, scaled so that its
    variate has unit variance on ``m``'s rows; a component's correlation is the mean over pairs
    of modalities of the correlation of their variates (for two modalities, CCA's canonical
    correlation). Components are sorted by it, decreasing, and it is clamped to ``[0, 1]``.

    Args:
        views: Modality → ``[N, d_m]``, row-aligned.
        present: Modality → ``[N]`` bool (default: all present).
        ridge: Diagonal regularisation of each covariance, a fraction of its mean eigenvalue.
        components: Number ``k`` of components (default: the narrowest modality's width).

    Returns:
        ``{m}.mean``, ``{m}.projection`` for each modality and ``correlations``.

    Shape:
        ``{m: [N, d_m]}`` → ``{m}.mean`` ``[d_m]``, ``{m}.projection`` ``[d_m, k]``,
        ``correlations`` ``[k]``.
    """
    _check_views(views, present)
    names = list(views)
    masks = {m: _mask(views, present, m) for m in names}
    k = components if components is not None else min(x.shape[1] for x in views.values())
    if not 1 <= k <= sum(x.shape[1] for x in views.values()):
        raise ValueError(f"components must be in [1, total width], got {k}")
    means, centred, whiten = _whitened_moments(views, masks, ridge)
    matrix = _whitened_block_covariance(centred, whiten, masks)
    _, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    projections = _unit_variance_directions(vectors.flip(1)[:, :k], centred, whiten, masks)
    correlations = _mean_pair_correlation(centred, projections, masks)
    order = torch.argsort(correlations, descending=True, stable=True)
    state = {"correlations": correlations[order]}
    for m in names:
        state[f"{m}.mean"] = means[m]
        state[f"{m}.projection"] = projections[m][:, order]
    return state


def _whitened_moments(
    views: Mapping[str, Tensor], masks: dict[str, Tensor], ridge: float
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Per modality, over its present rows: the mean, the centred view (zero in absent rows) and
    the whitening ``W_m = (C_mm + ridge · tr/d · I)^(-1/2)``, in float64.

    Raises:
        ValueError: if a modality is present on fewer than 2 rows.

    Shape:
        ``{m: [N, d_m]}`` → means ``{m: [d_m]}``, centred ``{m: [N, d_m]}``, whitening
        ``{m: [d_m, d_m]}``.
    """
    means, centred, whiten = {}, {}, {}
    for m in views:
        rows = views[m][masks[m]].double()
        if rows.shape[0] < 2:
            raise ValueError(f"modality {m!r} is present on fewer than 2 rows; drop it")
        means[m] = rows.mean(0)
        centred[m] = torch.where(
            masks[m][:, None], views[m].double() - means[m], torch.zeros((), dtype=torch.float64)
        )
        whiten[m] = inverse_sqrt(
            rows.T @ rows / rows.shape[0] - torch.outer(means[m], means[m]), ridge
        )
    return means, centred, whiten


def _whitened_block_covariance(
    centred: dict[str, Tensor], whiten: dict[str, Tensor], masks: dict[str, Tensor]
) -> Tensor:
    """The block matrix ``K`` of MCCA: ``K_ab = W_a C_ab W_b`` with each ``C_ab`` over the rows
    where both are present, and ``K_mm = I``.

    Raises:
        ValueError: if two modalities share fewer than 2 rows.

    Shape:
        centred ``{m: [N, d_m]}``, whitening ``{m: [d_m, d_m]}`` → ``[Σ d_m, Σ d_m]``.
    """
    names = list(centred)
    blocks: dict[tuple[str, str], Tensor] = {}
    for a in names:
        for b in names:
            if a == b:
                blocks[a, b] = torch.eye(centred[a].shape[1], dtype=torch.float64)
                continue
            both = masks[a] & masks[b]
            count = int(both.sum())
            if count < 2:
                raise ValueError(f"modalities {a!r} and {b!r} share fewer than 2 rows")
            cross = centred[a][both].T @ centred[b][both] / count
            blocks[a, b] = whiten[a] @ cross @ whiten[b]
    return torch.cat([torch.cat([blocks[a, b] for b in names], 1) for a in names], 0)


def _unit_variance_directions(
    vectors: Tensor,
    centred: dict[str, Tensor],
    whiten: dict[str, Tensor],
    masks: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Each modality's directions ``W_m v_m`` from its block ``v_m`` of the eigenvectors,
    scaled so that each variate has unit variance on the modality's present rows.

    Shape:
        vectors ``[Σ d_m, k]`` → ``{m: [d_m, k]}``.
    """
    projections, start = {}, 0
    for m in centred:
        block = vectors[start : start + centred[m].shape[1]]
        start += centred[m].shape[1]
        direction = whiten[m] @ block
        rows = centred[m][masks[m]] @ direction
        projections[m] = direction / rows.pow(2).mean(0).sqrt().clamp_min(1e-300)
    return projections


def _mean_pair_correlation(
    centred: dict[str, Tensor], projections: dict[str, Tensor], masks: dict[str, Tensor]
) -> Tensor:
    """Per component, the mean over pairs of modalities of the correlation of their variates
    on the rows where both are present, clamped to ``[0, 1]``.

    Shape:
        projections ``{m: [d_m, k]}`` → ``[k]``.
    """
    names = list(centred)
    k = projections[names[0]].shape[1]
    correlations = torch.zeros(k, dtype=torch.float64)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    for a, b in pairs:
        both = masks[a] & masks[b]
        za = centred[a][both] @ projections[a]
        zb = centred[b][both] @ projections[b]
        correlations += (za * zb).sum(0) / (za.norm(dim=0) * zb.norm(dim=0)).clamp_min(1e-300)
    return (correlations / len(pairs)).clamp(0.0, 1.0)


def polar(matrix: Tensor) -> Tensor:
    """The polar factor ``U Vᵀ`` of the thin SVD ``matrix = U Σ Vᵀ``: the orthogonal Procrustes
    map (orthonormal rows or columns, whichever is fewer) ``R = argmin ||x R − y||`` for
    ``matrix = xᵀy``.

    Shape:
        ``[a, b]`` → ``[a, b]``.
    """
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def _universe(
    views: Mapping[str, Tensor], masks: Mapping[str, Tensor], maps: Mapping[str, Tensor]
) -> Tensor:
    mapped = {m: views[m] @ maps[m] for m in maps}
    return mean_over_present(mapped, {m: masks[m] for m in maps})


def gpa_state(
    views: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None = None,
    iterations: int = GPA_ITERATIONS,
    tolerance: float = GPA_TOLERANCE,
) -> dict[str, Tensor]:
    """Generalized Procrustes Analysis: orthogonal maps ``Ω_m`` minimising the dispersion
    ``Σ_m ||x_m Ω_m − U||²`` of the mapped views around their mean ``U`` (the universe).

    Views narrower than the widest (``D``) are zero-padded, so ``Ω_m`` is the top ``d_m`` rows
    of a ``D × D`` orthogonal matrix. Starts from the first modality as the universe (each
    next one is fitted onto the mean of those before it), then alternates *universe = per-row
    mean of the mapped views present* and *each map = Procrustes onto the universe on its
    rows*, which never increases the dispersion, until it falls by less than ``tolerance``
    (relative) or after ``iterations`` rounds. Only rows with at least two modalities count.
    The inputs are used as given (normalise them first).

    Returns:
        ``{m}.matrix`` for each modality and ``dispersion``, the final mean squared distance of
        a present mapped view to its row's universe.

    Shape:
        ``{m: [N, d_m]}`` → ``{m}.matrix`` ``[d_m, D]`` with orthonormal rows,
        ``dispersion`` ``[]``.
    """
    _check_views(views, present)
    names = list(views)
    masks = {m: _mask(views, present, m) for m in names}
    used = torch.stack([masks[m] for m in names]).sum(0) >= 2
    if int(used.sum()) < 2:
        raise ValueError("gpa needs at least 2 rows where two or more modalities are present")
    x = {m: views[m][used].double() for m in names}
    p = {m: masks[m][used] for m in names}
    dim = max(v.shape[1] for v in x.values())
    maps: dict[str, Tensor] = {}
    for m in names:
        if not maps:
            maps[m] = torch.eye(x[m].shape[1], dim, dtype=torch.float64)
            continue
        target = _universe(x, p, maps).nan_to_num(0.0)
        rows = p[m] & torch.stack([p[n] for n in maps]).any(0)
        maps[m] = polar(x[m][rows].T @ target[rows])
    previous = float("inf")
    dispersion = torch.zeros((), dtype=torch.float64)
    for _ in range(iterations):
        universe = _universe(x, p, maps)
        maps = {m: polar(x[m][p[m]].T @ universe[p[m]]) for m in names}
        universe = _universe(x, p, maps)
        total = sum(((x[m] @ maps[m] - universe)[p[m]] ** 2).sum() for m in names)
        dispersion = torch.as_tensor(total, dtype=torch.float64) / sum(
            int(p[m].sum()) for m in names
        )
        if previous - float(dispersion) <= tolerance * max(previous, 1e-300):
            break
        previous = float(dispersion)
    return {**{f"{m}.matrix": maps[m] for m in names}, "dispersion": dispersion}


def residual_correction_state(
    mapped: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None = None,
    ridge: float = DEFAULT_CORRECTION_RIDGE,
) -> dict[str, Tensor]:
    """GCPA's correction: one map ``C = I + Δ`` shared by every modality, with ``Δ`` the ridge
    least-squares fit of each row's residual to its universe from the mapped view,

    ``Δ = argmin Σ_m ||(U − z_m) − z_m Δ||² + λ ||Δ||²``, ``λ = ridge · tr(Σ z_mᵀz_m) / D``,

    over the rows where ``m`` is present (among those with at least two modalities), ``U``
    being the per-row mean of the present ``z_m``. Since ``Σ z_mᵀU = Σ UᵀU`` summed over the
    views present, ``C`` (with ``λ = 0``) is ``(S_U + S_R)^(-1) S_U`` for the scatter ``S_U``
    of the universe and ``S_R`` of the residuals: it shrinks the directions where the
    modalities disagree most relative to what they share.

    Shape:
        ``{m: [N, D]}`` → ``correction`` ``[D, D]``.
    """
    _check_views(mapped, present)
    names = list(mapped)
    masks = {m: _mask(mapped, present, m) for m in names}
    used = torch.stack([masks[m] for m in names]).sum(0) >= 2
    z = {m: mapped[m][used].double() for m in names}
    p = {m: masks[m][used] for m in names}
    universe = mean_over_present(z, p)
    dim = next(iter(z.values())).shape[1]
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    cross = torch.zeros(dim, dim, dtype=torch.float64)
    for m in names:
        zm = z[m][p[m]]
        gram += zm.T @ zm
        cross += zm.T @ (universe[p[m]] - zm)
    lam = ridge * float(gram.diagonal().sum()) / dim
    delta = torch.linalg.solve(gram + lam * torch.eye(dim, dtype=torch.float64), cross)
    return {"correction": torch.eye(dim, dtype=torch.float64) + delta}


class _View(nn.Module):
    """One modality's buffers: its normalisation, size and map into the shared space."""

    def __init__(self, normalisation: str, dim: int) -> None:
        super().__init__()
        self.normalisation, self.dim = normalisation, dim

    def set(self, key: str, value: Tensor) -> None:
        self.register_buffer(key, value.detach().double().contiguous())

    def stats(self) -> dict[str, Tensor]:
        keys = {"standard": ("mean", "std"), "l2": ("norm",), "none": ()}[self.normalisation]
        return {key: self.get_buffer(key) for key in keys}

    def prepare(self, x: Tensor) -> Tensor:
        """Normalised and size-scaled rows. Shape: ``[N, d]`` → ``[N, d]``."""
        return normalise(x.double(), self.stats(), self.normalisation) / self.get_buffer("size")

    def restore(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`prepare`. Shape: ``[N, d]`` → ``[N, d]``."""
        return denormalise(x * self.get_buffer("size"), self.stats(), self.normalisation)


class MultiWayAligner(nn.Module):
    """One map per modality into a shared space, fitted on every modality at once.

    ``embed`` maps each present modality into the shared space and averages over the present
    ones; ``translate`` decodes that into the target's native space: for ``gpa`` through the
    transpose of the target's orthogonal map, for ``cca`` by predicting the target's canonical
    variates (each source variate times its correlation) and decoding them by least squares
    on the target's rows. ``gcpa`` embeds only: its correction is invertible, so its
    translations would be exactly ``gpa``'s. ``cca`` embeds the canonical variates weighted by
    their correlations, so that components the modalities barely share count little.

    Args:
        method: ``"cca"``, ``"gpa"`` or ``"gcpa"``.
        normalisation: ``"standard"``, ``"l2"`` or ``"none"``, per modality.
        ridge: ``cca``: covariance ridge (:data:`DEFAULT_CCA_RIDGE`); ``gcpa``: correction
            ridge (:data:`DEFAULT_CORRECTION_RIDGE`); unused by ``gpa``.

    Shape:
        ``embed``: ``{m: [B, d_m] or [B, T_m, d_m]}`` → ``[B, D]`` (float32);
        ``translate``: → ``[B, d_target]`` (float32).

    Example:
        >>> import torch
        >>> z = torch.randn(200, 4, dtype=torch.float64)
        >>> views = {"a": z @ torch.randn(4, 6, dtype=torch.float64), "b": z.clone()}
        >>> aligner = MultiWayAligner("gpa", "standard").fit(views)
        >>> aligner.encode("a", views["a"]).shape
        torch.Size([200, 6])
    """

    def __init__(
        self, method: str = "gpa", normalisation: str = "standard", ridge: float | None = None
    ) -> None:
        super().__init__()
        if method not in MULTIWAY_METHODS:
            raise ValueError(f"method must be one of {MULTIWAY_METHODS}, got {method!r}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}"
            )
        default = DEFAULT_CCA_RIDGE if method == "cca" else DEFAULT_CORRECTION_RIDGE
        self.ridge = default if ridge is None else float(ridge)
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")
        self.method, self.normalisation = method, normalisation
        self.views = nn.ModuleDict()
        self.frozen: list[str] = []  # modalities fitted together (extend adds to views only)

    @property
    def capabilities(self) -> Capabilities:
        """Every method embeds into its shared space; ``cca`` and ``gpa`` also translate."""
        return Capabilities(embeds=True, translates=self.method != "gcpa")

    @property
    def names(self) -> list[str]:
        """The modalities it maps, in order."""
        return list(self.views)

    def view(self, name: str) -> _View:
        """The buffers of modality ``name``."""
        view = self.views[name]
        assert isinstance(view, _View)
        return view

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has run."""
        return len(self.views) > 0

    def _new_view(self, name: str, x: Tensor, rows: Tensor) -> _View:
        if not name or "." in name:
            raise ValueError(f"modality names must be non-empty and without '.', got {name!r}")
        view = _View(self.normalisation, x.shape[1])
        anchors = x[rows].double()
        for key, value in normalisation_state(anchors, self.normalisation).items():
            view.set(key, value)
        if not all(bool(torch.isfinite(v).all()) for v in view.stats().values()) or not bool(
            torch.isfinite(anchors).all()
        ):
            raise ValueError(f"{name!r} has NaN or Inf on present rows; drop or repair them")
        normalised = normalise(anchors, view.stats(), self.normalisation)
        size = normalised.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        view.set("size", size)
        return view

    def fit(
        self, views: Mapping[str, Tensor], present: Mapping[str, Tensor] | None = None
    ) -> MultiWayAligner:
        """Fits every map at once on row-aligned views; ``present`` marks missing rows.

        Shape:
            views ``{m: [N, d_m]}``, present ``{m: [N]}``.
        """
        _check_views(views, present)
        masks = {m: _mask(views, present, m) for m in views}
        self.views = nn.ModuleDict({m: self._new_view(m, views[m], masks[m]) for m in views})
        prepared = {
            m: torch.where(masks[m][:, None], self.view(m).prepare(views[m].nan_to_num(0.0)), 0.0)
            for m in views
        }
        if self.method == "cca":
            state = mcca_state(prepared, masks, self.ridge)
            weights = state["correlations"]
            self.register_buffer("weights", weights)
            for m in self.names:
                view = self.view(m)
                projection = state[f"{m}.projection"]
                x = prepared[m][masks[m]] - state[f"{m}.mean"]
                variates = x @ projection
                # Least squares from unit variates back to the prepared rows.
                decoder = torch.linalg.lstsq(variates, x, driver="gelsd").solution
                view.set("offset", state[f"{m}.mean"])
                view.set("matrix", projection)
                view.set("decoder", decoder)
        else:
            state = gpa_state(prepared, masks)
            self.register_buffer("dispersion", state["dispersion"])
            dim = max(x.shape[1] for x in views.values())
            for m in self.names:
                view = self.view(m)
                view.set("offset", torch.zeros(views[m].shape[1], dtype=torch.float64))
                view.set("matrix", state[f"{m}.matrix"])
                view.set("decoder", state[f"{m}.matrix"].T)
            correction = torch.eye(dim, dtype=torch.float64)
            if self.method == "gcpa":
                mapped = {m: prepared[m] @ state[f"{m}.matrix"] for m in views}
                correction = residual_correction_state(mapped, masks, self.ridge)["correction"]
            self.register_buffer("correction", correction)
        self.frozen = list(views)
        return self

    def _check(self, name: str, x: Tensor) -> None:
        if not self.fitted:
            raise ValueError("this aligner is not fitted; call fit(views) or load(directory)")
        if name not in self.views:
            raise ValueError(f"unknown modality {name!r}; this aligner maps {self.names}")
        width = self.view(name).get_buffer("matrix").shape[0]
        if x.dim() != 2 or x.shape[1] != width:
            raise ValueError(f"{name!r} vectors must be [N, {width}], got {tuple(x.shape)}")

    def universe(self, name: str, x: Tensor) -> Tensor:
        """``name``'s vectors in the GPA universe before any correction (``cca``: the
        unweighted canonical variates).

        Shape:
            ``[N, d_name]`` → ``[N, D]`` (float64).
        """
        self._check(name, x)
        view = self.view(name)
        return (view.prepare(x) - view.get_buffer("offset")) @ view.get_buffer("matrix")

    def encode(self, name: str, x: Tensor) -> Tensor:
        """``name``'s vectors in the shared space.

        Shape:
            ``[N, d_name]`` → ``[N, D]`` (float64).
        """
        z = self.universe(name, x)
        if self.method == "cca":
            return z * self.get_buffer("weights")
        return z @ self.get_buffer("correction")

    def decode(self, name: str, z: Tensor) -> Tensor:
        """Shared-space vectors decoded into ``name``'s native space (``cca``: predicted
        variates, already weighted; ``gpa``: universe vectors).

        Shape:
            ``[N, D]`` → ``[N, d_name]`` (float64).
        """
        if not self.capabilities.translates:
            raise ValueError(
                "gcpa does not translate (its correction is invertible, so its translations "
                "are gpa's); use method='gpa' to translate"
            )
        if name not in self.views:
            raise ValueError(f"unknown modality {name!r}; this aligner maps {self.names}")
        view = self.view(name)
        x = z.double() @ view.get_buffer("decoder") + view.get_buffer("offset")
        return view.restore(x)

    def embed(self, batch: Batch, /, *, target: str | None = None) -> Tensor:
        """Mean over each row's present modalities of their shared-space vectors.

        Raises:
            ValueError: with ``target`` (no message passing), or on an unknown modality.
        """
        if target is not None:
            raise ValueError(
                f"{self.method} has no bridged path; embed without target, or translate"
            )
        encoded = {}
        for name, x in batch.pooled().items():
            keep = batch.present[name][:, None]
            encoded[name] = self.encode(name, torch.where(keep, x, torch.zeros_like(x)))
        return mean_over_present(encoded, batch.present).float()

    def translate(self, batch: Batch, /, *, target: str) -> Tensor:
        """The batch's shared-space vectors decoded into ``target``'s native space.

        Raises:
            ValueError: if ``target`` is among the inputs, or for ``gcpa``.
        """
        if target in batch.embeddings:
            raise ValueError(
                f"target modality {target!r} is also an input; leave it out of the batch"
            )
        return self.decode(target, self.embed(batch).double()).float()

    def extend(self, name: str, x: Tensor, known: Batch) -> MultiWayAligner:
        """Adds modality ``name`` with one more map into the fixed shared space; every existing
        buffer stays as it is, so existing modalities embed bit for bit as before.

        ``gpa``/``gcpa``: the Procrustes map of ``name`` onto the universe (before the
        correction) that the known modalities of each row give (their mean), on the rows
        pairing ``name`` with at least one known modality; the correction then applies to it as
        to the others. ``cca``: the least-squares map from ``name`` onto the known modalities'
        mean canonical variates, with the correlations kept.

        Args:
            name: The new modality.
            x: Its vectors, row-aligned with ``known``.
            known: Known modalities on the same rows (with presence masks).

        Shape:
            x ``[N, d_name]``; known ``{m: [N, d_m]}``.
        """
        if not self.fitted:
            raise ValueError("fit the aligner before extending it")
        if name in self.views:
            raise ValueError(f"modality {name!r} is already mapped; extend with a new one")
        unknown = sorted(set(known.embeddings) - set(self.views))
        if unknown:
            raise ValueError(f"known batch has modalities {unknown} this aligner does not map")
        if not known.embeddings:
            raise ValueError("known must hold at least one modality the aligner maps")
        if x.dim() != 2 or x.shape[0] != known.batch_size:
            raise ValueError(f"x must be [{known.batch_size}, d], row-aligned with known")
        pooled = known.pooled()
        universe = {m: self.universe(m, v) for m, v in pooled.items()}
        rows = torch.stack([known.present[m] for m in pooled]).any(0)
        if int(rows.sum()) < 2:
            raise ValueError(
                f"fewer than 2 rows pair {name!r} with a known modality; extend needs paired rows"
            )
        target = mean_over_present(
            {m: v[rows] for m, v in universe.items()},
            {m: known.present[m][rows] for m in pooled},
        )
        view = self._new_view(name, x, rows)
        prepared = view.prepare(x[rows])
        if self.method == "cca":
            offset = prepared.mean(0)
            matrix = torch.linalg.lstsq(prepared - offset, target, driver="gelsd").solution
            decoder = torch.linalg.lstsq(target, prepared - offset, driver="gelsd").solution
        else:
            offset = torch.zeros(x.shape[1], dtype=torch.float64)
            matrix = polar(prepared.T @ target)
            decoder = matrix.T
        view.set("offset", offset)
        view.set("matrix", matrix)
        view.set("decoder", decoder)
        self.views[name] = view
        return self

    def save(self, directory: str | Path) -> None:
        """Writes ``aligner.json`` and ``aligner.safetensors``."""
        from safetensors.torch import save_file

        if not self.fitted:
            raise ValueError("fit the aligner before saving it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "method": self.method,
            "normalisation": self.normalisation,
            "ridge": self.ridge,
            "names": self.names,
            "fitted_together": self.frozen,
            "schema_version": SCHEMA_VERSION,
        }
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / "aligner.safetensors"))
        (directory / "aligner.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> MultiWayAligner:
        """Reads an aligner written by :meth:`save` (no pickle).

        Raises:
            ValueError: if a file is missing or corrupt.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / "aligner.json").read_text())
            tensors = load_file(str(directory / "aligner.safetensors"))
            aligner = cls(meta["method"], meta["normalisation"], meta["ridge"])
            for name in meta["names"]:
                view = _View(aligner.normalisation, 0)
                prefix = f"views.{name}."
                for key, value in tensors.items():
                    if key.startswith(prefix):
                        view.set(key[len(prefix) :], value)
                view.dim = view.get_buffer("matrix").shape[0]
                aligner.views[name] = view
            for key, value in tensors.items():
                if not key.startswith("views."):
                    aligner.register_buffer(key, value)
            aligner.frozen = list(meta["fitted_together"])
        except (OSError, KeyError, AttributeError, json.JSONDecodeError, SafetensorError) as err:
            raise ValueError(
                f"cannot read an aligner from {directory} ({err}); it needs aligner.json and "
                "aligner.safetensors as written by MultiWayAligner.save"
            ) from err
        return aligner
