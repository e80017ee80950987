from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from synthetic import write_synthetic

from vallayz import IMPN
from vallayz.data import PairedEmbeddings
from vallayz_train.config import TrainConfig
from vallayz_train.trainer import Trainer


def test_the_validation_score_weighs_each_pair_by_its_queries(tmp_path: Path) -> None:
    data = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=120, groups=24))
    # Audio is present on few rows, so its pairs have far fewer queries than text <-> image.
    audio = data.present["audio"]  # the loaded mask, edited in memory only
    audio[np.flatnonzero(audio)[10:]] = False
    config = TrainConfig(max_steps=1, batch_size=16, warmup_steps=0, planner=False)
    trainer = Trainer(data, tmp_path / "run", IMPN(tiny_config()), config, progress=False)

    scores = trainer.validate()

    numerator = denominator = 0.0
    for name, value in scores.items():
        if name == "val/R@1":
            continue
        sources, target = name.removeprefix("val/R@1/").split("->")
        present = data.present[target][trainer.val_pool].copy()
        for source in sources.split("+"):
            present &= data.present[source][trainer.val_pool]
        numerator += value * present.sum()
        denominator += present.sum()
    per_pair = [v for k, v in scores.items() if k != "val/R@1"]
    assert len(per_pair) >= 6
    assert scores["val/R@1"] == pytest.approx(numerator / denominator)
    # The weighting matters here: the plain mean of the pairs differs.
    assert scores["val/R@1"] != pytest.approx(float(np.mean(per_pair)))
