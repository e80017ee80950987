"""benchmarks/claim4.py: its cubature, plain network and many-variant limit, end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "claim4.py"


@pytest.fixture(scope="module")
def claim4() -> ModuleType:
    spec = importlib.util.spec_from_file_location("claim4", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["claim4"] = module
    spec.loader.exec_module(module)
    return module


def test_the_cubature_has_the_gaussian_moments_up_to_degree_five(claim4: ModuleType) -> None:
    d = 5
    points, weights = claim4.gaussian_cubature(d)
    assert points.shape == (2 * d * d + 1, d)

    def moment(*powers: int) -> float:
        monomial = torch.ones(len(points), dtype=torch.float64)
        for axis, power in enumerate(powers):
            monomial = monomial * points[:, axis] ** power
        return float(weights @ monomial)

    assert moment() == pytest.approx(1.0)
    assert moment(2) == pytest.approx(1.0) and moment(0, 0, 2) == pytest.approx(1.0)
    assert moment(4) == pytest.approx(3.0) and moment(2, 2) == pytest.approx(1.0)
    for odd in [(1,), (3,), (1, 1), (2, 1), (5,), (3, 2), (1, 1, 1, 1, 1)]:
        assert moment(*odd) == pytest.approx(0.0, abs=1e-12)
    # Degree 6 is beyond the rule (a Gaussian's sixth moment is 15).
    assert moment(6) != pytest.approx(15.0)


def _bridge(claim4: ModuleType, update: str = "residual") -> torch.nn.Module:
    from vallayz.layers import BridgeLayer

    torch.manual_seed(3)
    return BridgeLayer(8, 2, 6, 4, 0.7, update, 2).double().eval()


def test_the_plain_network_copies_the_bridge_and_refuses_a_gru(claim4: ModuleType) -> None:
    bridge = _bridge(claim4)
    rows = claim4.deterministic_rows(bridge, 8)
    assert all(r["max_abs_diff"] < 1e-12 for r in rows if "float64" in r["check"])
    # The comparison can fail: a changed weight shows.
    plain = claim4.PlainBridge(bridge)
    states, real, senders, same = claim4.layout(8)
    with torch.no_grad():
        plain.value.weight.mul_(1.01)
        ours = bridge(states, real, senders, same, torch.zeros(4, dtype=torch.float64)).states
        assert (plain(states, real, senders, same) - ours).abs().max() > 1e-6
    with pytest.raises(ValueError, match="residual update"):
        claim4.PlainBridge(_bridge(claim4, "gru"))


def test_the_many_variant_limit_of_a_flat_gate_is_the_clean_message(claim4: ModuleType) -> None:
    """With a constant gate the layer averages its variants' values, a linear function of the
    variant, so its many-variant limit is the clean message whatever sigma."""
    bridge = _bridge(claim4)
    with torch.no_grad():
        bridge.cross.gate.out.weight.zero_()
    probe = claim4.MessageProbe(bridge, 8)
    points, weights = claim4.gaussian_cubature(8)
    clean = probe.phi(probe.s[None])[0]
    for sigma in (0.0, 0.3):
        torch.testing.assert_close(probe.limit(sigma, points, weights), clean)
    sampled = probe.sampled(0.3, 4096, 4)
    assert (sampled - clean).abs().max() < 0.03


def test_claim4_script_runs_and_measures_the_orders(claim4: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "claim4.json"
    args = ["--steps", "3", "--variants", "32", "--repeats", "2", "--json", str(out)]
    assert claim4.main(args) == 0
    results = json.loads(out.read_text())
    assert len(results["deterministic"]) == 4
    rows = results["smoothing"]
    assert [r["sigma"] for r in rows] == list(claim4.SIGMAS)
    # E[phi] - (phi + sigma^2/2 Tr H) is a fourth-order remainder; the layer's own limit
    # differs from the expansion at second order.
    assert 3.5 < rows[-1]["order of E[φ] − expansion"] < 4.5
    assert 1.5 < rows[-1]["order of layer − expansion"] < 2.5
    assert results["trace_fd_vs_autograd_max_abs"] < 1e-5
