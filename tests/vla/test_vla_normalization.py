"""Normalizer: both modes, degenerate dimensions, errors, stats round trips, state_dict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla.normalization import NormalizationConfig, Normalizer

FEATURES = {"observation.state": (3,), "action": (2,)}


def make_stats(rng: np.random.Generator | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Stats as a LeRobot dataset gives them (float64 arrays, plus extra entries we ignore)."""
    rng = rng or np.random.default_rng(0)
    state = rng.normal(size=(500, 3)) * np.array([2.0, 0.5, 3.0]) + np.array([1.0, -1.0, 0.0])
    action = rng.uniform(-1, 1, size=(500, 2))
    action[:, 1] = 0.7  # a dimension that never changes, e.g. a gripper held closed

    def stats_of(x: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0),
            "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0),
            "count": np.array([len(x)]),
        }

    return {"observation.state": stats_of(state), "action": stats_of(action), "observation.images.cam": {}}


@pytest.mark.parametrize("mode", ["quantile", "mean_std"])
def test_round_trip(mode: str) -> None:
    norm = Normalizer(FEATURES, NormalizationConfig(mode=mode), make_stats())
    x = torch.randn(4, 5, 3) * 3  # (B, T, S): leading dims are free
    y = norm.normalize("observation.state", x)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(norm.unnormalize("observation.state", y), x, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y, x)  # it really transformed


def test_quantile_maps_q01_and_q99_to_minus_one_and_one() -> None:
    stats = make_stats()
    norm = Normalizer(FEATURES, NormalizationConfig(mode="quantile"), stats)
    q01 = torch.tensor(stats["observation.state"]["q01"], dtype=torch.float32)
    q99 = torch.tensor(stats["observation.state"]["q99"], dtype=torch.float32)
    torch.testing.assert_close(norm.normalize("observation.state", q01), -torch.ones(3))
    torch.testing.assert_close(norm.normalize("observation.state", q99), torch.ones(3))
    torch.testing.assert_close(norm.normalize("observation.state", (q01 + q99) / 2), torch.zeros(3), atol=1e-6, rtol=0)


def test_mean_std_standardizes() -> None:
    stats = make_stats()
    norm = Normalizer(FEATURES, NormalizationConfig(mode="mean_std"), stats)
    mean = torch.tensor(stats["observation.state"]["mean"], dtype=torch.float32)
    std = torch.tensor(stats["observation.state"]["std"], dtype=torch.float32)
    torch.testing.assert_close(norm.normalize("observation.state", mean + 2 * std), 2 * torch.ones(3))


def test_clip_option_bounds_normalized_values() -> None:
    stats = make_stats()
    norm = Normalizer(FEATURES, NormalizationConfig(mode="quantile", clip=1.0), stats)
    y = norm.normalize("observation.state", torch.tensor([[100.0, -100.0, 0.0]]))
    assert y.min() >= -1 and y.max() <= 1
    assert y[0, 0] == 1 and y[0, 1] == -1


@pytest.mark.parametrize("mode", ["quantile", "mean_std"])
def test_degenerate_dimension_is_centred_without_division_by_zero(mode: str) -> None:
    stats = make_stats()
    norm = Normalizer(FEATURES, NormalizationConfig(mode=mode), stats)
    x = torch.tensor([[0.3, 0.7], [-0.5, 0.7], [0.1, 0.9]])  # last row moves the constant dim
    y = norm.normalize("action", x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:2, 1], torch.zeros(2), atol=1e-6, rtol=0)  # the constant value -> 0
    assert abs(y[2, 1].item() - 0.2) < 1e-5  # unit scale: an off-data value is shifted, not blown up
    torch.testing.assert_close(norm.unnormalize("action", y), x, atol=1e-6, rtol=0)
    # The model's outputs for that dim come back as the constant.
    assert abs(norm.unnormalize("action", torch.zeros(1, 2))[0, 1].item() - 0.7) < 1e-6


def test_missing_stats_are_an_error_naming_the_feature() -> None:
    norm = Normalizer(FEATURES, NormalizationConfig())
    assert not norm.has_stats()
    with pytest.raises(RuntimeError, match=r"'action'.*q01"):
        norm.normalize("action", torch.zeros(2))
    with pytest.raises(RuntimeError, match=r"'observation.state'"):
        norm.unnormalize("observation.state", torch.zeros(3))
    stats = make_stats()
    del stats["action"]
    with pytest.raises(ValueError, match=r"no stats for feature 'action'"):
        norm.set_stats(stats)
    stats = make_stats()
    del stats["observation.state"]["q99"]
    with pytest.raises(ValueError, match=r"'observation.state' lack \['q99'\]"):
        norm.set_stats(stats)
    # mean_std needs mean/std, not quantiles
    only_quantiles = {k: {"q01": v["q01"], "q99": v["q99"]} for k, v in make_stats().items() if k in FEATURES}
    with pytest.raises(ValueError, match=r"lack \['mean', 'std'\]"):
        Normalizer(FEATURES, NormalizationConfig(mode="mean_std"), only_quantiles)
    assert not norm.has_stats()  # failed set_stats calls changed nothing


def test_bad_stats_are_refused_naming_key_stat_and_shape() -> None:
    stats = make_stats()
    stats["action"]["q01"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"stats\['action'\]\['q01'\] has shape \(3,\); expected \(2,\)"):
        Normalizer(FEATURES, NormalizationConfig(), stats)
    stats = make_stats()
    stats["observation.state"]["mean"] = np.array([0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match=r"stats\['observation.state'\]\['mean'\] contains NaN"):
        Normalizer(FEATURES, NormalizationConfig(), stats)
    stats = make_stats()
    stats["action"]["q01"], stats["action"]["q99"] = stats["action"]["q99"], stats["action"]["q01"]
    with pytest.raises(ValueError, match=r"'action'.*q99 < q01"):
        Normalizer(FEATURES, NormalizationConfig(), stats)


def test_wrong_input_shape_and_unknown_key() -> None:
    norm = Normalizer(FEATURES, NormalizationConfig(), make_stats())
    with pytest.raises(ValueError, match=r"'action' input has shape \(4, 3\); expected \(\.\.\., 2\)"):
        norm.normalize("action", torch.zeros(4, 3))
    with pytest.raises(KeyError, match="observation.velocity"):
        norm.normalize("observation.velocity", torch.zeros(3))


@pytest.mark.parametrize("mode", ["quantile", "mean_std"])
def test_stats_dict_round_trips_through_json(mode: str) -> None:
    config = NormalizationConfig(mode=mode)
    norm = Normalizer(FEATURES, config, make_stats())
    data = json.loads(json.dumps(norm.stats_dict()))
    assert set(data) == set(FEATURES)
    assert set(data["action"]) == {"mean", "std", "min", "max", "q01", "q99"}  # "count" dropped
    rebuilt = Normalizer.from_stats_dict(data, config)
    assert rebuilt.features == norm.features
    x = torch.randn(6, 3)
    assert torch.equal(rebuilt.normalize("observation.state", x), norm.normalize("observation.state", x))
    for key, tensor in norm.state_dict().items():  # all six stats were given, so all are set
        assert torch.equal(rebuilt.state_dict()[key], tensor), key


def test_stats_live_in_state_dict_and_load_with_it() -> None:
    norm = Normalizer(FEATURES, NormalizationConfig(), make_stats())
    state = norm.state_dict()
    assert {"observation_state__q01", "observation_state__q99", "action__mean", "action__std"} <= set(state)
    assert all("." not in name for name in state)
    fresh = Normalizer(FEATURES, NormalizationConfig())
    assert not fresh.has_stats()
    fresh.load_state_dict(state)
    assert fresh.has_stats()
    x = torch.randn(2, 2)
    assert torch.equal(fresh.normalize("action", x), norm.normalize("action", x))


def test_partial_stats_are_not_reported() -> None:
    # Only the mode's required stats given: the others stay unset and are left out of stats_dict.
    stats = {k: {"q01": v["q01"], "q99": v["q99"]} for k, v in make_stats().items() if k in FEATURES}
    norm = Normalizer(FEATURES, NormalizationConfig(), stats)
    assert norm.has_stats()
    assert set(norm.stats_dict()["action"]) == {"q01", "q99"}
    # Stats given as torch tensors or lists are accepted too.
    stats["action"] = {"q01": torch.tensor([-1.0, 0.0]), "q99": [1.0, 2.0]}
    norm.set_stats(stats)
    torch.testing.assert_close(norm.normalize("action", torch.tensor([1.0, 2.0])), torch.ones(2))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match=r"mode='minmax'.*expected one of"):
        NormalizationConfig(mode="minmax")
    with pytest.raises(ValueError, match=r"clip=0.*None or a number > 0"):
        NormalizationConfig(clip=0)
    with pytest.raises(ValueError, match=r"eps=-1"):
        NormalizationConfig(eps=-1)
    with pytest.raises(ValueError, match=r"unknown keys \['kind'\]"):
        NormalizationConfig.from_dict({"kind": "quantile"})
    config = NormalizationConfig(mode="mean_std", clip=5.0)
    assert NormalizationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"features .*'a.b'.*'a_b'"):
        Normalizer({"a.b": (1,), "a_b": (1,)}, NormalizationConfig())


def test_normalize_keeps_a_low_precision_input_dtype() -> None:
    norm = Normalizer(FEATURES, NormalizationConfig(), make_stats())
    x = torch.randn(3, 2, dtype=torch.bfloat16)
    y = norm.normalize("action", x)
    assert y.dtype == torch.bfloat16
