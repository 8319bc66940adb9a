"""scripts/power.py: the detectable-difference formula and the variance parts it measures, on hand-made data."""

import importlib.util
import math

import numpy as np
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def power():
    spec = importlib.util.spec_from_file_location("power_script", ROOT / "scripts" / "power.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_with_no_seed_spread_it_is_the_normal_formula(power):
    found = power.detectable(0.0, 0.02**2, 3, 0.05, 0.8)
    assert found == pytest.approx((1.959964 + 0.841621) * 0.02, rel=1e-5)


def test_more_seeds_only_shrink_the_seed_part(power):
    s2, c = 0.03**2, 0.015**2
    values = [power.detectable(s2, c, s, 0.05, 0.8) for s in (3, 5, 10, 1000)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx((1.959964 + 0.841621) * math.sqrt(s2 / 1000 + c), rel=0.01)
    assert values[-1] > 2.8 * 0.015  # the test-sampling floor stays


def test_components_of_identical_arms_are_zero_and_csv_round_trips(power, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [10, 30])
    seeds = {s: rng.dirichlet([1, 1], 40) for s in (42, 43, 44)}
    rows = ["arm,seed,image,label,p_0,p_1"]
    for arm in ("baseline", "synthetic"):
        rows += [
            f"{arm},{s},{i},{y},{p[0]:.6f},{p[1]:.6f}"
            for s, probs in seeds.items()
            for i, (y, p) in enumerate(zip(labels, probs))
        ]
    (tmp_path / "probs.csv").write_text("\n".join(rows) + "\n")
    read_labels, arms = power.read_probabilities(tmp_path / "probs.csv")
    assert np.array_equal(read_labels, labels) and sorted(arms["synthetic"]) == [42, 43, 44]
    found = power.components(read_labels, arms["synthetic"], arms["baseline"], "auc", n_boot=200)
    assert found == {"seeds": 3, "diff": 0.0, "s2_seed": 0.0, "c_test": 0.0, "v_test": 0.0}
