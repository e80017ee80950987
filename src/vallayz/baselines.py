"""Closed-form translators between two latent spaces, fitted on anchor pairs.

Pre-processing follows latent space translation (Maiorca et al., 2023): each space is
normalised with statistics of its anchors (standard scaling, L2 normalisation, or nothing),
the smaller space is zero-padded to the larger dimension, a map is estimated, and results are
un-scaled into the target space. Maps (row-vector convention, ``y ≈ x R + b``):

* ``affine``: ``R`` and ``b`` by gradient descent on the mean squared error;
* ``linear``: least squares ``R = argmin ||X R − Y||``;
* ``l-ortho``: the least-squares ``R`` projected to the nearest orthogonal matrix by SVD;
* ``ortho``: orthogonal Procrustes, ``R = U Vᵀ`` for ``Xᵀ Y = U Σ Vᵀ``.

The maths are pure functions returning state dicts; :class:`LatentTranslator` stores the state
as buffers and saves it like a model (safetensors + JSON). :class:`ClosedFormTranslators` holds
one translator per ordered pair of modalities and is the translation half of the
:class:`~vallayz.method.Method` contract.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vallayz.functional import mean_over_present
from vallayz.method import Capabilities
from vallayz.types import Batch

METHODS = ("affine", "linear", "l-ortho", "ortho")
NORMALISATIONS = ("standard", "l2", "none")
_EPS = 1e-8
# Below this squared ratio of Cholesky diagonal entries (about 1 / cond(xᵀx)), least squares
# falls back from the normal equations to an SVD solver.
_CHOLESKY_RCOND = 1e-10


def zero_pad(x: Tensor, dim: int) -> Tensor:
    """Pads the last dimension of ``x`` with zeros up to ``dim``.

    Shape:
        ``[N, d]`` → ``[N, dim]`` (``dim >= d``).
    """
    if dim < x.shape[-1]:
        raise ValueError(f"cannot zero-pad {x.shape[-1]} dimensions down to {dim}")
    return F.pad(x, (0, dim - x.shape[-1]))


def normalisation_state(x: Tensor, kind: str) -> dict[str, Tensor]:
    """Statistics of the anchors ``x`` for ``kind`` normalisation.

    Returns:
        ``standard``: ``mean`` and ``std`` per dimension; ``l2``: ``norm``, the mean anchor norm
        (to un-scale into the space); ``none``: nothing.

    Shape:
        ``[N, d]`` → mean ``[d]``, std ``[d]``, norm ``[]``.
    """
    if kind == "standard":
        mean = x.mean(0)
        # Two passes (mean, then mean squared deviation): as accurate as Welford's update in
        # ``Tensor.std`` and several times faster over the rows of a row-major matrix.
        std = (x - mean).pow_(2).mean(0).sqrt_().clamp_min(_EPS)
        return {"mean": mean, "std": std}
    if kind == "l2":
        return {"norm": x.norm(dim=-1).mean()}
    if kind == "none":
        return {}
    raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {kind!r}")


def normalise(x: Tensor, state: dict[str, Tensor], kind: str) -> Tensor:
    """Applies the normalisation described by ``state``.

    Shape:
        ``[N, d]`` → ``[N, d]``.
    """
    if kind == "standard":
        return (x - state["mean"]).div_(state["std"])
    if kind == "l2":
        return F.normalize(x, dim=-1, eps=_EPS)
    return x


def denormalise(x: Tensor, state: dict[str, Tensor], kind: str) -> Tensor:
    """Maps normalised vectors back into the space (exact inverse for ``standard``; for ``l2``
    rescales to the mean anchor norm).

    Shape:
        ``[N, d]`` → ``[N, d]``.
    """
    if kind == "standard":
        return x * state["std"] + state["mean"]
    if kind == "l2":
        return F.normalize(x, dim=-1, eps=_EPS) * state["norm"]
    return x


def _finite(x: Tensor, state: dict[str, Tensor]) -> bool:
    """Whether ``x`` is free of NaN and Inf, read from its normalisation statistics when it has
    any (a NaN or Inf entry makes its column's mean or the mean norm non-finite)."""
    if state:
        return all(bool(torch.isfinite(value).all()) for value in state.values())
    return bool(torch.isfinite(x).all())


def linear_state(x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Least-squares ``R = argmin ||x R − y||_F``.

    Solved by the normal equations ``xᵀx R = xᵀy`` in float64 (Cholesky), accumulated over
    row blocks so no float64 copy of ``x`` is held whole; when ``xᵀx`` is singular or too
    ill-conditioned for that, by ``torch.linalg.lstsq`` (the minimum-norm solution).

    Shape:
        x ``[N, d_x]``, y ``[N, d_y]`` → matrix ``[d_x, d_y]``.
    """
    gram, cross = _gram(x, y)
    factor, info = torch.linalg.cholesky_ex(gram)
    diagonal = factor.diagonal()
    if int(info) == 0 and bool(diagonal.min() ** 2 > _CHOLESKY_RCOND * diagonal.max() ** 2):
        return {"matrix": torch.cholesky_solve(cross, factor).to(x.dtype)}
    driver = "gelsd" if x.device.type == "cpu" else None
    return {"matrix": torch.linalg.lstsq(x, y, driver=driver).solution}


def lortho_state(x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The least-squares map projected to the nearest orthogonal matrix (``U Vᵀ`` of its SVD),
    zero-padded to the larger width as in :func:`ortho_state`.

    Shape:
        x ``[N, d_x]``, y ``[N, d_y]`` → matrix ``[d, d]``, ``d = max(d_x, d_y)``.
    """
    return {"matrix": padded_polar(linear_state(x, y)["matrix"], max(x.shape[1], y.shape[1]))}


def ortho_state(x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Orthogonal Procrustes: the orthogonal ``R`` minimising ``||x R − y||_F``.

    ``x`` and ``y`` may differ in width: the result is the Procrustes map between them
    zero-padded to the larger width, found without padding them.

    Shape:
        x ``[N, d_x]``, y ``[N, d_y]`` → matrix ``[d, d]``, ``d = max(d_x, d_y)``.
    """
    return {"matrix": padded_polar(x.T @ y, max(x.shape[1], y.shape[1]))}


def padded_polar(m: Tensor, dim: int) -> Tensor:
    """An orthogonal ``[dim, dim]`` matrix whose top-left ``[a, b]`` block is ``U Vᵀ`` for the
    SVD ``m = U Σ Vᵀ`` (the polar factor of ``m``).

    This equals ``U Vᵀ`` of the SVD of ``m`` zero-padded to ``[dim, dim]`` wherever that
    padded problem has a unique answer (the padded rows or columns multiply zero-padded inputs
    or are cut from the output, so only the top-left block acts); the rest completes it to an
    orthogonal matrix from the SVD's own orthogonal complement, at the cost of one ``[a, b]``
    SVD instead of a ``[dim, dim]`` one.

    Shape:
        ``[a, b]`` → ``[dim, dim]`` with ``max(a, b) == dim``.
    """
    a, b = m.shape
    if max(a, b) != dim:
        raise ValueError(f"padded_polar needs max{tuple(m.shape)} == {dim}")
    if a < b:
        return padded_polar(m.T, dim).T.contiguous()
    u, _, vh = torch.linalg.svd(m, full_matrices=a != b)
    if a == b:
        return u @ vh
    return torch.cat([u[:, :b] @ vh, u[:, b:]], dim=1)


def _gram(x: Tensor, y: Tensor, block: int = 4096) -> tuple[Tensor, Tensor]:
    """``(xᵀx, xᵀy)`` in float64, a block of rows at a time."""
    gram = x.new_zeros((x.shape[1], x.shape[1]), dtype=torch.float64)
    cross = x.new_zeros((x.shape[1], y.shape[1]), dtype=torch.float64)
    for i in range(0, x.shape[0], block):
        xb = x[i : i + block].double()
        gram.addmm_(xb.T, xb)
        cross.addmm_(xb.T, y[i : i + block].double())
    return gram, cross


def affine_state(
    x: Tensor, y: Tensor, steps: int = 500, lr: float = 1e-2, seed: int = 0
) -> dict[str, Tensor]:
    """Affine map ``x R + b`` fitted by full-batch gradient descent (Adam) on the MSE, in
    float64.

    The gradient of ``mean((x R + b − y)²)`` reads the data only through ``xᵀx``, ``xᵀy`` and
    the column sums of ``x`` and ``y``. With at least half as many rows as source dimensions
    these are computed once, and a step costs ``O(d_x² d_y)`` whatever the number of rows;
    with fewer rows a step goes through the rows (``O(N d_x d_y)``), which is then cheaper.
    Both are the descent an autograd loop through the rows makes: they agree with it to
    rounding step by step, though after hundreds of steps Adam's normalised updates, which
    magnify the rounding of near-zero gradients, can leave them about 1e-4 apart.

    Shape:
        x ``[N, d_x]``, y ``[N, d_y]`` → matrix ``[d_x, d_y]``, bias ``[d_y]``.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    n, dim = x.shape
    init = torch.randn(dim, y.shape[1], generator=generator, dtype=x.dtype) / dim**0.5
    matrix = init.to(device=x.device, dtype=torch.float64).requires_grad_()
    bias = torch.zeros(y.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    optimizer = torch.optim.Adam([matrix, bias], lr=lr)
    scale = 2.0 / (n * y.shape[1])
    from_sums = 2 * n >= dim
    if from_sums:
        gram, cross = _gram(x, y)
        x_sum, y_sum = x.double().sum(0), y.double().sum(0)
    else:
        x64, y64 = x.double(), y.double()
    with torch.no_grad():
        for _ in range(steps):
            # d/dR = 2/(N d_y) · xᵀ(x R + 1 bᵀ − y); d/db = 2/(N d_y) · 1ᵀ(x R + 1 bᵀ − y).
            if from_sums:
                matrix.grad = scale * (gram @ matrix + torch.outer(x_sum, bias) - cross)
                bias.grad = scale * (x_sum @ matrix + n * bias - y_sum)
            else:
                residual = torch.addmm(bias - y64, x64, matrix)
                matrix.grad = scale * (x64.T @ residual)
                bias.grad = scale * residual.sum(0)
            optimizer.step()
    return {"matrix": matrix.detach().to(x.dtype), "bias": bias.detach().to(x.dtype)}


class LatentTranslator(nn.Module):
    """A closed-form translator from a source to a target latent space.

    Args:
        method: ``"affine"``, ``"linear"``, ``"l-ortho"`` or ``"ortho"``.
        normalisation: ``"standard"``, ``"l2"`` or ``"none"``.
        affine_steps: Gradient steps of the ``affine`` fit.
        affine_anchors: The ``affine`` fit uses at most this many anchors (a seeded random
            subset), which keeps full-batch gradient descent affordable on large anchor sets;
            the closed forms use every anchor.

    Example:
        >>> import torch
        >>> x = torch.randn(100, 8, dtype=torch.float64)
        >>> q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
        >>> t = LatentTranslator("ortho", "none").fit(x, x @ q)
        >>> torch.allclose(t.transform(x), x @ q)
        True
    """

    def __init__(
        self,
        method: str = "ortho",
        normalisation: str = "standard",
        affine_steps: int = 500,
        affine_anchors: int = 20000,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}"
            )
        self.method = method
        self.normalisation = normalisation
        self.affine_steps = affine_steps
        self.affine_anchors = affine_anchors
        self.source_dim = 0
        self.target_dim = 0

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has run."""
        return self.source_dim > 0

    def fit(self, x: Tensor, y: Tensor) -> LatentTranslator:
        """Estimates the map from anchor pairs ``(x[i], y[i])``.

        Shape:
            x ``[N, d_source]``, y ``[N, d_target]``.
        """
        if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"fit needs paired anchors x [N, d_source] and y [N, d_target] with one N, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[0] < 2:
            raise ValueError("fit needs at least 2 anchor pairs")
        source_state = normalisation_state(x, self.normalisation)
        target_state = normalisation_state(y, self.normalisation)
        if not (_finite(x, source_state) and _finite(y, target_state)):
            raise ValueError("anchors contain NaN or Inf; drop or repair those rows before fit")
        self.source_dim, self.target_dim = x.shape[1], y.shape[1]
        dim = max(self.source_dim, self.target_dim)
        xs = normalise(x, source_state, self.normalisation)
        ys = normalise(y, target_state, self.normalisation)
        if self.method == "linear":
            matrix = linear_state(xs, ys)["matrix"]
            pad = (0, dim - self.target_dim, 0, dim - self.source_dim)
            state = {"matrix": F.pad(matrix, pad)}
        elif self.method == "l-ortho":
            state = lortho_state(xs, ys)
        elif self.method == "ortho":
            state = ortho_state(xs, ys)
        else:
            xs, ys = zero_pad(xs, dim), zero_pad(ys, dim)
            if xs.shape[0] > self.affine_anchors:
                generator = torch.Generator().manual_seed(0)
                keep = torch.randperm(xs.shape[0], generator=generator)[: self.affine_anchors]
                xs, ys = xs[keep.to(xs.device)], ys[keep.to(xs.device)]
            state = affine_state(xs, ys, self.affine_steps)
        state.setdefault("bias", torch.zeros(dim, dtype=x.dtype, device=x.device))
        for prefix, values in (("source", source_state), ("target", target_state)):
            for key, value in values.items():
                self.register_buffer(f"{prefix}_{key}", value)
        for key, value in state.items():
            self.register_buffer(key, value)
        return self

    def _state(self, prefix: str) -> dict[str, Tensor]:
        keys = {"standard": ("mean", "std"), "l2": ("norm",), "none": ()}[self.normalisation]
        return {key: self.get_buffer(f"{prefix}_{key}") for key in keys}

    def transform(self, x: Tensor) -> Tensor:
        """Translates source vectors into the target space.

        Shape:
            ``[N, d_source]`` → ``[N, d_target]``.
        """
        if not self.fitted:
            raise ValueError("this translator is not fitted; call fit(x, y) or load(directory)")
        if x.dim() != 2 or x.shape[1] != self.source_dim:
            raise ValueError(
                f"transform expects [N, {self.source_dim}] source vectors, got {tuple(x.shape)}"
            )
        dim = max(self.source_dim, self.target_dim)
        xs = zero_pad(normalise(x, self._state("source"), self.normalisation), dim)
        matrix, bias = self.get_buffer("matrix"), self.get_buffer("bias")
        ys = (xs @ matrix + bias)[:, : self.target_dim]
        return denormalise(ys, self._state("target"), self.normalisation)

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def save(self, directory: str | Path) -> None:
        """Writes ``translator.json`` and ``translator.safetensors``."""
        from safetensors.torch import save_file

        if not self.fitted:
            raise ValueError("fit the translator before saving it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "method": self.method,
            "normalisation": self.normalisation,
            "affine_steps": self.affine_steps,
            "source_dim": self.source_dim,
            "target_dim": self.target_dim,
            "schema_version": 1,
        }
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / "translator.safetensors"))
        (directory / "translator.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> LatentTranslator:
        """Reads a translator written by :meth:`save` (no pickle).

        Raises:
            ValueError: if a file is missing or corrupt.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / "translator.json").read_text())
            tensors = load_file(str(directory / "translator.safetensors"))
        except (OSError, json.JSONDecodeError, SafetensorError) as err:
            raise ValueError(
                f"cannot read a translator from {directory} ({err}); it needs translator.json "
                "and translator.safetensors as written by LatentTranslator.save"
            ) from err
        translator = cls(meta["method"], meta["normalisation"], meta["affine_steps"])
        translator.source_dim, translator.target_dim = meta["source_dim"], meta["target_dim"]
        for key, value in tensors.items():
            translator.register_buffer(key, value)
        return translator


AnchorPairs = Callable[[str, str], tuple[Tensor, Tensor]]
"""``(source, target) → (x [N, d_source], y [N, d_target])``: the anchor pairs of one map."""


class ClosedFormTranslators:
    """One :class:`LatentTranslator` per ordered pair of modalities, each fitted on first use
    on the anchor pairs ``anchors(source, target)`` gives; a batch with several present sources
    is translated from each on its own (in float64) and averaged over the present ones.

    Args:
        method: A translator method (:data:`METHODS`).
        normalisation: Its normalisation (:data:`NORMALISATIONS`).
        anchors: The anchor pairs of a map.
        maps: Fitted maps to share between instances (filled on first use).

    Shape:
        ``translate``: ``{m: [B, d_m] or [B, T_m, d_m]}`` → ``[B, d_target]`` (float32).
    """

    capabilities = Capabilities(translates=True)
    """Closed-form maps translate; they share no space and pass no messages."""

    def __init__(
        self,
        method: str,
        normalisation: str,
        anchors: AnchorPairs,
        maps: dict[tuple[str, str], LatentTranslator] | None = None,
    ) -> None:
        LatentTranslator(method, normalisation)  # checks both names
        self.method, self.normalisation, self.anchors = method, normalisation, anchors
        self.maps: dict[tuple[str, str], LatentTranslator] = maps if maps is not None else {}

    def translator(self, source: str, target: str) -> LatentTranslator:
        """The map ``source → target``, fitted on its anchors the first time it is asked for."""
        if (source, target) not in self.maps:
            x, y = self.anchors(source, target)
            translator = LatentTranslator(self.method, self.normalisation)
            self.maps[source, target] = translator.fit(x.double(), y.double())
        return self.maps[source, target]

    def embed(self, batch: Batch, /, *, target: str | None = None) -> Tensor:
        """Not served: closed-form maps share no space.

        Raises:
            ValueError: always.
        """
        raise ValueError(
            "closed-form translators have no shared space; use translate (retrieval mode "
            "'translate')"
        )

    def translate(self, batch: Batch, /, *, target: str) -> Tensor:
        """Mean over each row's present sources of their translations into ``target``.

        Raises:
            ValueError: if ``target`` is among the inputs.
        """
        if target in batch.embeddings:
            raise ValueError(
                f"target modality {target!r} is also an input; leave it out of the batch"
            )
        pooled = batch.pooled()
        translations = {}
        for source, x in pooled.items():
            keep = batch.present[source][:, None]
            clean = torch.where(keep, x, torch.zeros_like(x)).double()
            translations[source] = self.translator(source, target).transform(clean)
        return mean_over_present(translations, batch.present).float()
