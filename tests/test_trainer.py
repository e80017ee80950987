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


def test_the_hashed_feature_tables_get_their_own_learning_rate() -> None:
    from vallayz.learned import BaselineConfig, ContrastiveHeads
    from vallayz_train.trainer import parameter_groups

    impn = IMPN(tiny_config(token_buckets={"text": 32}))
    heads = ContrastiveHeads(
        BaselineConfig("contrastive-heads", {"text": 12, "image": 16}, token_buckets={"text": 32})
    )
    for model in (impn, heads):
        config = TrainConfig(lr=1e-3, front_end_lr=5e-3)
        groups = parameter_groups(model, config)
        tables = {id(p) for p in model.front_ends.parameters()}
        assert [{id(p) for p in g["params"]} == tables for g in groups] == [False, True]
        assert [g["lr_scale"] for g in groups] == [1.0, pytest.approx(5.0)]
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert sum(len(g["params"]) for g in groups) == len(trainable)
    # Without tables there is one group; without front_end_lr the tables follow lr.
    assert len(parameter_groups(IMPN(tiny_config()), config)) == 1
    assert parameter_groups(impn, TrainConfig())[1]["lr_scale"] == 1.0
    with pytest.raises(ValueError, match="front_end_lr must be positive"):
        TrainConfig(front_end_lr=0.0)
