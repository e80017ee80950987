"""The method contract: every method implements it, and the trainer, the planner and the
evaluation work with a method they know only through it."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DIMS, tiny_config, tri_modal_inputs
from synthetic import write_synthetic
from torch import Tensor, nn

from vallayz import IMPN, Batch, Capabilities, Method, Objective, TrainableMethod, Tunables
from vallayz.baselines import ClosedFormTranslators, LatentTranslator
from vallayz.data import PairedEmbeddings
from vallayz.eval import model_encoder, retrieval_table
from vallayz.functional import mean_over_present
from vallayz.learned import build_model
from vallayz.losses import LossOutput, LossSettings, LossWeights, info_nce
from vallayz_train.config import TrainConfig
from vallayz_train.planner import Planner
from vallayz_train.trainer import METRICS, PLANNER_LOG, Trainer, sigma_scale


def _methods() -> dict[str, Any]:
    return {
        "impn": IMPN(tiny_config()),
        "contrastive-heads": build_model("contrastive-heads", dict(DIMS), {"dim": 8}),
        "mlp-translator": build_model("mlp-translator", dict(DIMS), {"hidden": 8}),
        "seq-heads": build_model("seq-heads", dict(DIMS), {"dim": 8, "seq_heads": 2}),
        "fusemix": build_model("fusemix", dict(DIMS), {"dim": 8, "depth": 1}),
    }


METHOD_NAMES = ["impn", "contrastive-heads", "mlp-translator", "seq-heads", "fusemix"]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_learned_method_implements_the_trainable_contract(name: str) -> None:
    method = _methods()[name]
    assert isinstance(method, TrainableMethod) and isinstance(method, Method)
    objective = method.objective(LossSettings())
    assert isinstance(objective, Objective)
    # Only IMPN has knobs for a planner.
    assert isinstance(objective.tunables, Tunables) == (name == "impn")
    assert (objective.tunables is None) == (name != "impn")
    out = objective(Batch.of(tri_modal_inputs(6)), torch.Generator().manual_seed(0))
    assert out.total.dim() == 0 and torch.isfinite(out.total)
    assert out.terms and all(torch.isfinite(v) for v in out.terms.values())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_capabilities_say_which_calls_are_served(name: str) -> None:
    """A served call returns vectors of the right shape; an unserved one raises."""
    method = _methods()[name].eval()
    caps = method.capabilities
    inputs = tri_modal_inputs(4)
    sources = Batch.of({"text": inputs["text"], "audio": inputs["audio"]})
    calls = {
        "embeds": lambda: method.embed(sources),
        "bridges": lambda: method.embed(sources, target="image"),
        "translates": lambda: method.translate(sources, target="image"),
    }
    width = {"embeds": None, "bridges": None, "translates": DIMS["image"]}
    for capability, call in calls.items():
        if getattr(caps, capability):
            out = call()
            assert out.dim() == 2 and out.shape[0] == 4 and torch.isfinite(out).all()
            assert width[capability] in (None, out.shape[1])
        else:
            with pytest.raises(ValueError):
                call()
    assert caps.modes == tuple(
        mode
        for mode, served in (
            ("soil", caps.embeds),
            ("bridged", caps.bridges),
            ("fused", caps.fuses),
            ("translate", caps.translates),
        )
        if served
    )


def test_closed_form_translators_are_the_translation_half() -> None:
    gen = torch.Generator().manual_seed(0)
    anchors = {m: torch.randn(50, d, generator=gen, dtype=torch.float64) for m, d in DIMS.items()}
    fitted: list[tuple[str, str]] = []

    def pairs(a: str, b: str) -> tuple[Tensor, Tensor]:
        fitted.append((a, b))
        return anchors[a], anchors[b]

    maps = ClosedFormTranslators("linear", "none", pairs)
    assert isinstance(maps, Method) and not isinstance(maps, TrainableMethod)
    assert maps.capabilities.modes == ("translate",)
    with pytest.raises(ValueError, match="no shared space"):
        maps.embed(Batch.of({"text": anchors["text"].float()}))
    # Each present source translated by its own least-squares map, averaged per row.
    x = {m: torch.randn(6, d, generator=gen) for m, d in DIMS.items() if m != "image"}
    audio = torch.tensor([True, False, True, True, False, True])
    out = maps.translate(Batch.of(x, {"audio": audio}), target="image")
    for row in range(6):
        sources = ["text", "audio"] if audio[row] else ["text"]
        expected = sum(
            LatentTranslator("linear", "none")
            .fit(anchors[m], anchors["image"])
            .transform(x[m][row : row + 1].double())
            for m in sources
        ) / len(sources)
        torch.testing.assert_close(out[row : row + 1], expected.float())
    maps.translate(Batch.of(x), target="image")
    assert sorted(fitted) == [("audio", "image"), ("text", "image")]  # each map fitted once
    with pytest.raises(ValueError, match="also an input"):
        maps.translate(Batch.of(x), target="text")


def test_loss_weights_change_only_through_a_checked_replace() -> None:
    weights = LossWeights()
    changed = weights.replace(cycle=0.75)
    assert changed.cycle == 0.75 and weights.cycle == 0.5  # a new object
    assert {k: v for k, v in changed.as_dict().items() if k != "cycle"} == {
        k: v for k, v in weights.as_dict().items() if k != "cycle"
    }
    with pytest.raises(ValueError, match=r"unknown loss term\(s\) \['cylce'\]"):
        weights.replace(cylce=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        weights.replace(cycle=-1.0)
    with pytest.raises(AttributeError):
        weights.cycle = 2.0  # type: ignore[misc]


def test_the_planner_changes_a_loss_weight_through_the_typed_api() -> None:
    tunables = IMPN(tiny_config()).objective(LossSettings()).tunables
    assert tunables is not None
    Planner._apply(tunables, "weight:translation", 1.5)
    assert tunables.loss_weights.translation == 1.5
    with pytest.raises(ValueError, match="unknown loss term"):
        Planner._apply(tunables, "weight:speling", 1.0)
    assert tunables.loss_weights == LossWeights(translation=1.5)


# ---------------------------------------------------------------- a method known only by contract


class FakeTunables:
    """Knobs that record what the trainer and the planner did with them."""

    def __init__(self) -> None:
        self.temperature, self.top_k = 1.0, 3
        self.sigma = {"text": 0.1}
        self.loss_weights = LossWeights()
        self.scales: list[float] = []
        self.calls: list[tuple[str, Any]] = []

    def set_gating(self, *, top_k: int | None = None, temperature: float | None = None) -> None:
        self.calls.append(("gating", (top_k, temperature)))
        self.top_k = top_k if top_k is not None else self.top_k
        self.temperature = temperature if temperature is not None else self.temperature

    def set_sigma(self, sigma: Mapping[str, float]) -> None:
        self.calls.append(("sigma", dict(sigma)))
        self.sigma = dict(sigma)

    def set_sigma_scale(self, scale: float) -> None:
        self.scales.append(scale)

    def set_loss_weights(self, weights: LossWeights) -> None:
        self.calls.append(("weights", weights))
        self.loss_weights = weights

    def critic_score(self, out: LossOutput) -> float:
        return -float(out.terms["align"])


class FakeObjective:
    def __init__(self, method: FakeMethod) -> None:
        self.method = method

    @property
    def tunables(self) -> FakeTunables | None:
        return self.method.knobs

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        heads, pooled, present = self.method.heads_of(batch), batch.pooled(), batch.present
        names = list(heads)
        aligned = []
        for a in names:
            for b in names[names.index(a) + 1 :]:
                both = present[a] & present[b]
                aligned.append(info_nce(heads[a][both], heads[b][both], 0.1))
        align = torch.stack(aligned).mean()
        decode = torch.stack(
            [
                F.mse_loss(self.method.decoders[m](heads[m][present[m]]), pooled[m][present[m]])
                for m in names
            ]
        ).mean()
        return LossOutput(total=align + decode, terms={"align": align, "decode": decode})


class FakeMethod(nn.Module):
    """A linear head into a shared space and a decoder back out, per modality."""

    capabilities = Capabilities(embeds=True, translates=True)

    def __init__(self, dims: dict[str, int], knobs: FakeTunables | None = None) -> None:
        super().__init__()
        self.names = list(dims)
        self.heads = nn.ModuleDict({m: nn.Linear(d, 8) for m, d in dims.items()})
        self.decoders = nn.ModuleDict({m: nn.Linear(8, d) for m, d in dims.items()})
        self.knobs = knobs

    def heads_of(self, batch: Batch) -> dict[str, Tensor]:
        return {m: F.normalize(self.heads[m](x), dim=-1) for m, x in batch.pooled().items()}

    def embed(self, batch: Batch, /, *, target: str | None = None) -> Tensor:
        if target is not None:
            raise ValueError("no bridged path")
        return mean_over_present(self.heads_of(batch), batch.present)

    def translate(self, batch: Batch, /, *, target: str) -> Tensor:
        return self.decoders[target](self.embed(batch))

    def objective(self, settings: LossSettings) -> FakeObjective:
        return FakeObjective(self)

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "w")
        (directory / "config.json").write_text(json.dumps({"fake": self.names}))


def _r_at_1(queries: Tensor, candidates: Tensor) -> float:
    """Float64 loop: the share of queries whose own candidate beats every other one."""
    q = F.normalize(queries.double(), dim=-1)
    c = F.normalize(candidates.double(), dim=-1)
    hits = 0
    for i in range(len(q)):
        scores = [float(q[i] @ c[j]) for j in range(len(c))]
        hits += all(scores[i] > s for j, s in enumerate(scores) if j != i)
    return hits / len(q)


def test_the_trainer_trains_and_validates_a_method_known_only_by_contract(
    tmp_path: Path,
) -> None:
    source = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=160, groups=32))
    fake = FakeMethod(source.modalities)
    assert isinstance(fake, TrainableMethod)
    initial = {k: v.clone() for k, v in fake.state_dict().items()}
    config = TrainConfig(
        max_steps=30, batch_size=32, eval_every=10, warmup_steps=0, lr=1e-2, val_pool=40
    )
    (tmp_path / "run").mkdir()
    trainer = Trainer(source, tmp_path / "run", fake, config, progress=False)
    assert trainer.planner is None and trainer.mode == "soil"  # no tunables; embeds, no bridge

    summary = trainer.fit()

    assert summary["steps"] == 30
    with (tmp_path / "run" / METRICS).open() as handle:
        rows = list(csv.DictReader(handle))
    align = [float(r["value"]) for r in rows if r["name"] == "train/align"]
    assert len(align) == 30 and np.mean(align[-5:]) < np.mean(align[:5])
    assert any(not torch.equal(v, fake.state_dict()[k]) for k, v in initial.items())
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["fake"]

    # Two retrieval paths of the evaluation, each against a float64 loop over the same vectors;
    # the shared-space path also against what validation recorded for the final model.
    pool = trainer.val_pool
    pair = (("text",), "image")
    used = pool[source.present["text"][pool] & source.present["image"][pool]]
    fake.eval()
    with torch.no_grad():
        expected = {
            "soil": _r_at_1(
                fake.embed(source.batch(used, ["text"])), fake.embed(source.batch(used, ["image"]))
            ),
            "translate": _r_at_1(
                fake.translate(source.batch(used, ["text"]), target="image"),
                source.batch(used, ["image"]).pooled()["image"],
            ),
        }
    for mode, value in expected.items():
        table = retrieval_table(
            source, pool, model_encoder(fake, source, mode), [pair], pool=len(pool) + 1
        )
        assert table[0]["R@1"] == pytest.approx(value)
    assert summary["val/R@1/text->image"] == pytest.approx(expected["soil"])
    assert expected["soil"] > 1 / len(used)  # trained: better than chance


def test_the_sigma_schedule_and_the_planner_use_only_the_tunables(tmp_path: Path) -> None:
    source = PairedEmbeddings(write_synthetic(tmp_path / "data", rows=120, groups=24))
    knobs = FakeTunables()
    fake = FakeMethod(source.modalities, knobs)
    config = TrainConfig(
        max_steps=20,
        batch_size=16,
        eval_every=20,
        warmup_steps=0,
        val_pool=20,
        planner_every=5,
        sigma_schedule="cosine",
    )
    (tmp_path / "run").mkdir()
    trainer = Trainer(source, tmp_path / "run", fake, config, progress=False)
    assert trainer.planner is not None

    trainer.fit()

    assert knobs.scales == [pytest.approx(sigma_scale(s, 20, config)) for s in range(20)]
    log = [json.loads(line) for line in (tmp_path / "run" / PLANNER_LOG).read_text().splitlines()]
    proposed = [d["parameter"] for d in log if d["action"] == "propose"]
    # Gating first (the fake has no contrastive or cycle term, so the temperature), then noise.
    assert proposed == ["temperature", "sigma"]
    assert knobs.calls[0] == ("gating", (None, 0.8))
    assert ("sigma", {"text": pytest.approx(0.07)}) in knobs.calls
    # The run ended mid-trial: the unjudged noise change was put back.
    assert log[-1]["action"] == "revert" and knobs.sigma == {"text": 0.1}
