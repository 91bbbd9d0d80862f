"""Each study's ``claims(numbers)`` on small hand-made numbers: it passes on good numbers, fails on
bad ones, and gives the same claims on numbers loaded back from the study's JSON.

The studies themselves are not run (``stabkit reproduce --quick`` does that); a claim that no
numbers can make FAIL is what these tests catch.
"""

import copy
import json
import math

import numpy as np
import pytest

import stabkit
from stabkit.reproduce import experiment_dir, find_experiments, save_json


@pytest.fixture(scope="module")
def studies():
    return find_experiments(experiment_dir())


def _verdicts(claims):
    return [c.passed for c in claims]


def _stored(tmp_path, numbers):
    """``numbers`` as the study's NAME.json gives them back."""
    return json.loads(save_json(tmp_path / "numbers.json", numbers).read_text())


def _assert_same_after_json(study, numbers, tmp_path):
    assert study.claims(_stored(tmp_path, numbers)) == study.claims(numbers)


def test_every_study_has_measure_claims_and_figure(studies):
    for name, study in studies.items():
        for part in ("measure", "claims", "figure"):
            assert callable(getattr(study, part, None)), f"{name} has no {part}()"


# softmax -------------------------------------------------------------------------------------


def _softmax_dtype(name, *, keeps=True):
    lim = stabkit.limits(name)
    predicted = {
        "sum_overflow": math.log(lim.max / 8),
        "exp_overflow": lim.exp_max,
        "exp_underflow": lim.exp_min if keeps else lim.exp_min_normal,
    }
    tol = {k: 1e-3 for k in predicted}
    return {
        "predicted": predicted,
        "reciprocal_predictions": {
            "reciprocal_flushes_above": None if keeps else 85.0,
            "reciprocal_overflows_below": -90.0,
        },
        "measured": {**predicted, "first_inexact_below_0": -13.0},
        "naive_value_at_first_failure": {
            "sum_overflow": 0.0,
            "exp_overflow": math.nan,
            "exp_underflow": math.nan,
            "first_inexact_below_0": math.inf,
        },
        "tolerance": tol,
        "subnormal_results_kept": keeps,
        "stable_softmax_exact_everywhere": True,
        "naive_wrong_everywhere_beyond_sum_overflow": True,
        "stable_logsumexp_within_4_eps": True,
    }


def _softmax_numbers():
    return {
        "n": 8,
        "dtypes": {
            "float16": _softmax_dtype("float16"),
            "float32": _softmax_dtype("float32", keeps=False),
        },
        "peers": {
            "log_softmax, all -inf row": {"peer_correct": False, "stabkit_correct": True},
        },
    }


def test_softmax_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["softmax"]
    claims = study.claims(_softmax_numbers())
    assert len(claims) == 2 * 4 + 1 and all(_verdicts(claims))
    assert claims[0].claim.startswith("float16: naive softmax of 8 equal c is 0 or NaN")
    assert "earlier than the sum" in claims[4].measured  # float32 flushes here
    _assert_same_after_json(study, _softmax_numbers(), tmp_path)


@pytest.mark.parametrize(
    "where, value, failing",
    [
        (("measured", "sum_overflow"), None, 0),
        (("measured", "sum_overflow"), math.log(stabkit.limits("float16").max / 8) + 0.1, 0),
        (("naive_wrong_everywhere_beyond_sum_overflow",), False, 0),
        (("measured", "exp_overflow"), None, 1),
        (("measured", "exp_overflow"), stabkit.limits("float16").exp_max - 0.1, 1),
        (("measured", "exp_underflow"), stabkit.limits("float16").exp_min + 0.1, 2),
        (("measured", "exp_underflow"), None, 2),
        (("stable_softmax_exact_everywhere",), False, 3),
        (("stable_logsumexp_within_4_eps",), False, 3),
    ],
)
def test_softmax_claims_fail_on_bad_numbers(studies, tmp_path, where, value, failing):
    numbers = _softmax_numbers()
    d = numbers["dtypes"]["float16"]
    for key in where[:-1]:
        d = d[key]
    d[where[-1]] = value
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["softmax"].claims(n))
        assert verdicts == [i != failing for i in range(len(verdicts))]


def test_softmax_peer_claim_fails_when_stabkit_is_wrong(studies):
    numbers = _softmax_numbers()
    numbers["peers"]["log_softmax, all -inf row"]["stabkit_correct"] = False
    claims = studies["softmax"].claims(numbers)
    assert not claims[-1].passed and "stabkit WRONG" in claims[-1].measured
    assert all(_verdicts(claims[:-1]))


# sweep_grid ----------------------------------------------------------------------------------


def _sweep_grid_numbers():
    scale, depth = [0.5, 1.0, 2.0], [5, 160]
    # the exact gains a^(depth+1), two seeds; 2^161 is inf in float32 and out of the checked range
    with np.errstate(over="ignore"):
        gain = np.array([[[a ** (d + 1)] * 2 for d in depth] for a in scale]).astype(np.float32)
    return {
        "seeds": 2,
        "deep": 50,
        "identity_gains_float32": {
            "scale": scale,
            "depth": depth,
            "output_gain": gain,
            "grad_ratio": gain.copy(),
        },
        "overflow": [("float16", 0, 17, 17), ("float16", 1, 18, 18)],
        "underflow": [("float16", 0, 26, 26, True), ("float16", 1, 26, 26, True)],
        "grad_ratio_depth": {"sigmoid": 1e-35, "tanh": 1e-3, "relu": 0.8},
        "first_zero_backward_float16": {
            "sigmoid": np.array([30, 31], np.int32),
            "relu": np.array([-1, -1], np.int32),
        },
    }


def test_sweep_grid_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["sweep_grid"]
    numbers = _sweep_grid_numbers()
    assert np.isinf(numbers["identity_gains_float32"]["output_gain"]).any()  # stored as "inf"
    claims = study.claims(numbers)
    assert _verdicts(claims) == [True] * 5
    assert "16 (config, quantity) pairs" in claims[0].measured
    assert "float16 seed 0: predicted 17, measured 17 (2 cases)" in claims[1].measured
    _assert_same_after_json(study, numbers, tmp_path)


def _bad_gain(n):
    n["identity_gains_float32"]["grad_ratio"][1, 0, 1] *= 1.001


def _wrong_overflow(n):
    n["overflow"][1] = ("float16", 1, 18, 19)


def _wrong_underflow(n):
    n["underflow"][0] = ("float16", 0, 26, 25, True)


def _sigmoid_kept(n):
    n["grad_ratio_depth"]["sigmoid"] = 1e-10


def _relu_vanished(n):
    n["grad_ratio_depth"]["relu"] = 1e-6


def _tanh_not_between(n):
    n["grad_ratio_depth"]["tanh"] = 1e-40


def _relu_zero_in_float16(n):
    n["first_zero_backward_float16"]["relu"][0] = 40


def _sigmoid_not_zero_in_float16(n):
    n["first_zero_backward_float16"]["sigmoid"][1] = -1


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_bad_gain, 0),
        (_wrong_overflow, 1),
        (_wrong_underflow, 2),
        (_sigmoid_kept, 3),
        (_relu_vanished, 3),
        (_tanh_not_between, 3),
        (_relu_zero_in_float16, 4),
        (_sigmoid_not_zero_in_float16, 4),
    ],
)
def test_sweep_grid_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _sweep_grid_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        assert _verdicts(studies["sweep_grid"].claims(n)) == [i != failing for i in range(5)]


def test_sweep_grid_closed_form_fails_with_nothing_in_range(studies):
    numbers = _sweep_grid_numbers()
    gains = numbers["identity_gains_float32"]
    gains["scale"], gains["depth"] = [2.0], [160]
    for key in ("output_gain", "grad_ratio"):
        gains[key] = gains[key][2:, 1:]
    claims = studies["sweep_grid"].claims(numbers)
    assert not claims[0].passed and "0 (config, quantity) pairs" in claims[0].measured


def test_sweep_grid_float16_claim_only_with_float16(studies):
    numbers = copy.deepcopy(_sweep_grid_numbers())
    numbers["first_zero_backward_float16"] = None
    assert len(studies["sweep_grid"].claims(numbers)) == 4


# precision -----------------------------------------------------------------------------------

PRECISION_DTYPES = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2")


def _precision_numbers():
    """The exact host simulation as the device's numbers: an IEEE device that keeps subnormals."""
    depths, device, limits = {}, {}, {}
    for n in PRECISION_DTYPES:
        lim = stabkit.limits(n)
        ieee = stabkit.underflow_depth(0.5, n, flush=False)
        depths[n] = {
            "overflow": stabkit.overflow_depth(1.5, n)._asdict(),
            "underflow": ieee._asdict(),
            "underflow_ieee": ieee._asdict(),
            "underflow_flushed": stabkit.underflow_depth(0.5, n, flush=True)._asdict(),
        }
        device[n] = {
            "device_overflow_step": depths[n]["overflow"]["step"],
            "device_overflow_value": math.inf if lim.has_inf else math.nan,
            "device_underflow_step": ieee.step,
            "device_zero_census": 1,
        }
        limits[n] = lim._asdict()
    network = {
        n: {"inf_layer": depths[n]["overflow"]["step"], "inf_at_layer": True}
        | {"nan_next_layer": True, "finite_before": True}
        for n in PRECISION_DTYPES[:4]
    }
    return {
        "device": "test:0",
        "probe": {n: {"inf_minus_inf": "nan", "zero_times_inf": "nan"} for n in PRECISION_DTYPES},
        "flushes": {n: False for n in PRECISION_DTYPES},
        "limits": limits,
        "depths": depths,
        "device_steps": device,
        "w_identity_network": network,
    }


def test_precision_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["precision"]
    claims = study.claims(_precision_numbers())
    assert _verdicts(claims) == [True] * 10
    assert claims[0].measured.endswith("values: ['inf']")
    assert claims[1].measured == "f8_e4m3fn 16; values: ['nan']"
    assert claims[7].measured == "simulated 28, device 28"
    _assert_same_after_json(study, _precision_numbers(), tmp_path)


def _set(*path):
    *keys, value = path

    def spoil(numbers):
        d = numbers
        for key in keys[:-1]:
            d = d[key]
        d[keys[-1]] = value(d[keys[-1]]) if callable(value) else value

    return spoil


def _flushed_as_late_as_ieee(numbers):
    numbers["depths"]["float32"]["underflow_flushed"].update(step=150, predicted=150)


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_set("device_steps", "float16", "device_overflow_value", 65504.0), 0),
        (_set("device_steps", "float8_e4m3fn", "device_overflow_value", math.inf), 1),
        (_set("probe", "float32", "inf_minus_inf", "inf"), 2),
        (_set("w_identity_network", "float32", "nan_next_layer", False), 3),
        (_set("w_identity_network", "float64", "finite_before", False), 3),
        (_set("device_steps", "float64", "device_underflow_step", lambda k: k + 1), 4),
        (_set("device_steps", "float16", "device_zero_census", 0), 4),
        (_set("depths", "float32", "overflow", "step", lambda k: k + 5), 5),
        (_set("depths", "float64", "underflow_ieee", "step", lambda k: k + 1), 6),
        (_set("depths", "float16", "overflow", "step", 27), 7),
        (_set("device_steps", "float16", "device_overflow_step", 29), 7),
        (_set("depths", "float32", "underflow_ieee", "step", 149), (6, 8)),
        (_flushed_as_late_as_ieee, 8),
        (_set("device_steps", "float32", "device_underflow_step", 127), (4, 8)),
        (_set("device_steps", "bfloat16", "device_overflow_step", lambda k: k + 1), 9),
    ],
)
def test_precision_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _precision_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["precision"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == list(np.atleast_1d(failing))


# deep_linear ---------------------------------------------------------------------------------


def _deep_linear_numbers():
    """float16 at every depth to 40, the closed forms rounded to float16 as the measurements."""
    depths = np.arange(1, 41)
    per_a = {}
    with np.errstate(over="ignore"):
        for a in (0.5, 1.0, 1.5):
            per_a[str(a)] = {
                "output_rms": (a ** (depths + 1.0)).astype(np.float16).astype(np.float64),
                "grad_w1_rms": (a**depths * 1.0).astype(np.float16).astype(np.float64),
                "first_inf_forward": -1,
                "first_nan_forward": -1,
                "first_zero_forward": -1,
                "first_inf_backward": -1,
                "first_nan_backward": -1,
                "subnormal_forward_layers": 0,
            }
    # float16: 1.5^28 > 65504 (inf at layer 28, NaN at 29; backward from L = 41); 0.5^25 rounds to 0
    per_a["1.5"].update(
        first_inf_forward=28, first_nan_forward=29, first_inf_backward=13, first_nan_backward=12
    )
    per_a["0.5"].update(first_zero_forward=25, subnormal_forward_layers=10)
    rec = {
        "depths": depths,
        "per_a": per_a,
        "overflow_chain_step": 28,
        "underflow_chain": {"step": 25, "flush": False},
    }
    return {"max_depth": {"float16": 40}, "dtypes": {"float16": rec}}


def test_deep_linear_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["deep_linear"]
    numbers = _deep_linear_numbers()
    assert np.isinf(numbers["dtypes"]["float16"]["per_a"]["1.5"]["output_rms"]).any()
    claims = study.claims(numbers)
    assert _verdicts(claims) == [True] * 6
    assert claims[3].measured == "exactly 1 in every dtype up to l = 41 (float16)"
    assert "float16: inf 28, NaN 29 (chain 28); backward inf 13, NaN 12" == claims[4].measured
    assert "10 subnormal layers first" in claims[5].measured
    _assert_same_after_json(study, _deep_linear_numbers(), tmp_path)


def _per_a(a, key, value):
    def spoil(numbers):
        pa = numbers["dtypes"]["float16"]["per_a"][a]
        if callable(value):
            value(pa[key])
        else:
            pa[key] = value

    return spoil


def _scale_at(i, factor):
    def change(array):
        array[i] *= factor

    return change


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_per_a("1.5", "output_rms", _scale_at(10, 1.1)), 0),
        (_per_a("1.5", "grad_w1_rms", _scale_at(3, 0.9)), 1),
        (_per_a("0.5", "output_rms", _scale_at(5, 1.1)), 2),
        (_per_a("0.5", "grad_w1_rms", _scale_at(0, 1.1)), 2),
        (_per_a("1.0", "output_rms", _scale_at(39, 1 + 2**-10)), 3),
        (_per_a("1.0", "grad_w1_rms", _scale_at(0, 0.5)), 3),
        (_per_a("1.5", "first_inf_forward", 27), 4),
        (_per_a("1.5", "first_nan_forward", 28), 4),
        (_per_a("1.5", "first_inf_backward", 14), 4),
        (_per_a("1.5", "first_nan_backward", 13), 4),
        (_per_a("0.5", "first_zero_forward", 26), 5),
    ],
)
def test_deep_linear_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _deep_linear_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["deep_linear"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == [failing]


# activations ---------------------------------------------------------------------------------


def _activations_numbers():
    depth = 50
    return {
        "config": {"depth": depth, "width": 32, "batch": 64, "threshold": 1e-2},
        "claims_numbers": {
            "sigmoid_dphi_max": 0.25,
            "sigmoid_dphi_argmax": 0.0,
            "sigmoid_dphi_at_0": 0.25,
            "z_points": 400001,
            "sigmoid_dphi_max_beyond_10": 4.5e-5,
            "saturated_sigmoid": 0.01,
            "saturated_sigmoid_big": 0.6,
            "ratio_sigmoid": 2e-32,
            "mean_field_sigmoid": 1e-32,
            "ratios": {
                "sigmoid": np.geomspace(0.25, 2e-32, depth),
                "tanh": np.geomspace(0.9, 0.05, depth),
                "relu": np.linspace(1.0, 1.5, depth),
            },
            "first_zero_backward_float16": {"sigmoid": 38, "relu": -1},
        },
    }


def _claims_number(key, value):
    def spoil(numbers):
        c = numbers["claims_numbers"]
        if callable(value):
            value(c[key])
        else:
            c[key] = value

    return spoil


def _relu_ratio_at(i, value):
    def spoil(numbers):
        numbers["claims_numbers"]["ratios"]["relu"][i] = value

    return spoil


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_claims_number("sigmoid_dphi_max", 0.2500001), 0),
        (_claims_number("sigmoid_dphi_at_0", 0.24), 0),
        (_claims_number("sigmoid_dphi_max_beyond_10", 2e-4), 1),
        (_claims_number("saturated_sigmoid_big", 0.2), 1),
        (_claims_number("saturated_sigmoid", 0.3), 1),
        (_claims_number("ratio_sigmoid", 1e-9), 2),
        (_claims_number("ratio_sigmoid", 2e-31), 2),  # 20x the mean field
        (_claims_number("mean_field_sigmoid", 1e-29), 2),  # above (1/4)^50 = 7.9e-31
        (_relu_ratio_at(10, 0.05), 3),
        (_relu_ratio_at(-1, 12.0), 3),
        (_claims_number("first_zero_backward_float16", {"sigmoid": -1, "relu": -1}), 4),
        (_claims_number("first_zero_backward_float16", {"sigmoid": 38, "relu": 45}), 4),
    ],
)
def test_activations_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _activations_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["activations"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == [failing]


def test_activations_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["activations"]
    claims = study.claims(_activations_numbers())
    assert _verdicts(claims) == [True] * 5
    assert claims[0].measured == "max over 400001 points in [-20, 20] (float64): 0.25 at z = 0"
    assert claims[4].measured.endswith("sigmoid layer 38; relu never")
    _assert_same_after_json(study, _activations_numbers(), tmp_path)


# training ------------------------------------------------------------------------------------


def _diagnosis(verdict, first_nonfinite, loss_drop, layer_ratio, grad_to_loss):
    return {
        "verdict": list(verdict),
        "first_nonfinite": np.array(first_nonfinite, np.int32),
        "loss_drop": np.array(loss_drop),
        "layer_ratio": np.array(layer_ratio),
        "grad_to_loss": np.array(grad_to_loss),
    }


def _training_numbers():
    """One seed: the note's four nets, the remedy, the clipped nets, the float16 runs."""
    note = ("exploding", "vanishing", "vanishing", "healthy")
    half = {
        "float32": ([[90, 0, 10, 0, 0]], 0.1),
        "float16": ([[0, 0, 100, 0, 0]], 0.9),
        "float16 + loss scaling": ([[88, 0, 12, 0, 0]], 0.12),
    }
    return {
        "config": {"depth": 30, "seeds": 1, "steps": 120},
        "evidence": {
            "note": _diagnosis(
                note, [3, -1, -1, -1], [np.nan, 1e-3, 0.3, 0.9], [1.0, 1e-9, 1e-12, 0.5], [1] * 4
            ),
            "remedy": _diagnosis(["healthy"], [-1], [0.8], [0.7], [1.0]),
            "fixed": _diagnosis(
                ("healthy", "vanishing", "vanishing", "healthy"),
                [-1] * 4,
                [0.5, 1e-3, 0.3, 0.9],
                [1.0, 1e-9, 1e-12, 0.5],
                [1] * 4,
            ),
        },
        "note_loss": np.array([[2.5e20, np.nan, np.nan], *[[1.0, 0.9, 0.8]] * 3], np.float32),
        "fixed_loss": np.array([[2.5e20, 3.0, 1.0], *[[1.0, 0.9, 0.8]] * 3], np.float32),
        "half": {
            k: {
                "loss": np.array([[1.0, 0.5, 0.3]], np.float32),
                "grad_census_step0": np.array(census, np.int32),
                "final_loss": np.array([final], np.float32),
            }
            for k, (census, final) in half.items()
        },
    }


def test_training_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["training"]
    claims = study.claims(_training_numbers())
    assert _verdicts(claims) == [True] * 8
    assert claims[0].measured == (
        "loss at step 0: 2.5e+20; first non-finite step [3]; verdicts ['exploding']"
    )
    assert claims[6].measured == "5/5 runs as expected"
    _assert_same_after_json(study, _training_numbers(), tmp_path)


def _training(*path):
    *keys, value = path

    def spoil(numbers):
        d = numbers
        for key in keys[:-1]:
            d = d[key]
        d[keys[-1]] = value

    return spoil


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_training("evidence", "note", "verdict", 0, "healthy"), (0, 6)),
        (_training("evidence", "note", "first_nonfinite", 0, -1), 0),
        (_training("evidence", "note", "loss_drop", 1, 0.05), 1),
        (_training("evidence", "note", "verdict", 1, "healthy"), (1, 6)),
        (_training("evidence", "note", "layer_ratio", 2, 1e-5), 2),
        (_training("evidence", "note", "verdict", 2, "exploding"), (2, 6)),
        (_training("evidence", "note", "loss_drop", 3, 0.3), 3),
        (_training("evidence", "note", "verdict", 3, "vanishing"), (3, 6)),
        (_training("evidence", "fixed", "first_nonfinite", 0, 5), 4),
        (_training("fixed_loss", 0, 2, np.nan), 4),
        (_training("evidence", "fixed", "verdict", 0, "exploding"), 4),
        (_training("evidence", "fixed", "verdict", 2, "healthy"), 4),
        (_training("evidence", "remedy", "verdict", 0, "vanishing"), (5, 6)),
        (_training("half", "float16", "grad_census_step0", 0, [50, 0, 50, 0, 0]), 7),
        (_training("half", "float16 + loss scaling", "grad_census_step0", 0, [80, 0, 20, 0, 0]), 7),
        (_training("half", "float16", "final_loss", 0, 0.2), 7),
        (_training("half", "float16 + loss scaling", "final_loss", 0, 0.3), 7),
    ],
)
def test_training_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _training_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["training"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == list(np.atleast_1d(failing))


# phase_diagram -------------------------------------------------------------------------------


def _agreement(passed=True):
    return {"max_z": 1.5, "max_abs_err": 0.002, "max_rel_err": 0.01, "passed": passed}


def _phase_diagram_numbers():
    names = ("ordered", "critical", "chaotic")
    return {
        "config": {"grid": 60, "width": 256, "depth": 16, "seeds": 12},
        "critical_sigma_w2_at_0.05": 1.7603,
        "points": {n: {} for n in names},
        "monte_carlo": {n: {"q": _agreement(), "c": _agreement()} for n in names},
        "claims_numbers": {
            "relu_critical_sigma_w2_at_0": 2.0,
            "relu_phase_at_2_0": "critical",
            "relu_chi_1_is_half_sigma_w2": True,
            "critical_sigma_w2_at_0": 1.0000000001,
            "chi_1_on_line_max_dev": 1e-13,
            "chi_1_on_line_dev_at_0": 1e-9,
            "xi_c_peak_max_distance": 0.05,
            "grid_step": 0.0593,
            "xi_c_min": 0.5,
            "xi_c_max": 1234.5,
        },
    }


def test_phase_diagram_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["phase_diagram"]
    claims = study.claims(_phase_diagram_numbers())
    assert _verdicts(claims) == [True] * 6
    assert claims[3].measured.endswith("finite ξ_c on the grid: 0.50–1.23e+03")
    assert claims[4].measured.startswith("ordered: max 1.5 SE, max rel err 1.0%")
    _assert_same_after_json(study, _phase_diagram_numbers(), tmp_path)


def _phase(key, value):
    def spoil(numbers):
        numbers["claims_numbers"][key] = value

    return spoil


def _disagree(name, key):
    def spoil(numbers):
        numbers["monte_carlo"][name][key]["passed"] = False

    return spoil


def _critical_005(numbers):
    numbers["critical_sigma_w2_at_0.05"] = 1.77


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_phase("relu_critical_sigma_w2_at_0", 2.0000001), 0),
        (_phase("relu_phase_at_2_0", "chaotic"), 0),
        (_phase("relu_chi_1_is_half_sigma_w2", False), 0),
        (_phase("critical_sigma_w2_at_0", 1.00001), 1),
        (_critical_005, 1),
        (_phase("chi_1_on_line_max_dev", 1e-9), 2),
        (_phase("chi_1_on_line_dev_at_0", 1e-6), 2),
        (_phase("xi_c_peak_max_distance", 0.1), 3),
        (_disagree("critical", "q"), 4),
        (_disagree("chaotic", "c"), 5),
    ],
)
def test_phase_diagram_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _phase_diagram_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["phase_diagram"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == [failing]


# trainable_depth -----------------------------------------------------------------------------


def _trainable_depth_numbers():
    """sigma_w^2 0.5 (ordered), 1.76 (critical: 6 xi_c beyond the grid), 7 (chaotic)."""
    score = np.array([[0.95, 0.98, 0.9], [0.9, 0.97, 0.6], [0.6, 0.95, 0.2], [0.05, 0.9, 0.0]])
    xi = np.array([3.0, 50.0, 2.5])
    return {
        "config": {"sigma_w2": (0.5, 1.76, 7.0), "depths": (4, 12, 24, 64)},
        "critical_sigma_w2": 1.7603,
        "sigma_w2": np.array([0.5, 1.76, 7.0]),
        "depth": np.array([4, 12, 24, 64]),
        "xi_c": xi,
        "six_xi_c": 6 * xi,
        "accuracy": 0.25 + 0.75 * score,
        "score": score,
        "trainable": score >= 0.5,
        "baseline": 0.25,
        "threshold": 0.5,
        "boundary": np.array([20.0, 64.0, 12.0]),
        "boundary_censored": np.array([False, True, False]),
    }


def test_trainable_depth_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["trainable_depth"]
    claims = study.claims(_trainable_depth_numbers())
    assert _verdicts(claims) == [True] * 4
    assert "σ_w² = 0.5: 20.0 vs 18.0 (×1.11); σ_w² = 7: 12.0 vs 15.0 (×0.80)" in claims[0].measured
    assert claims[2].measured.startswith("2 grid cells deeper than 12 ξ_c, 0 of them trainable")
    _assert_same_after_json(study, _trainable_depth_numbers(), tmp_path)


def _grid(key, index, value):
    def spoil(numbers):
        numbers[key][index] = value

    return spoil


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_grid("boundary", 0, 40.0), 0),  # 2.2 x 6 xi_c
        (_grid("boundary", 2, 0.0), 0),  # no chaotic point left to compare
        (_grid("boundary", 1, 15.0), 1),  # the critical net is no longer the deepest
        (_grid("trainable", (3, 0), True), 2),
        (_grid("score", (0, 1), 0.8), 3),
        (_grid("score", (3, 2), 0.2), 3),
    ],
)
def test_trainable_depth_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _trainable_depth_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["trainable_depth"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == [failing]


# jacobian_spectra ----------------------------------------------------------------------------

# var(lambda)/mean(lambda)^2 per layer at criticality: 0 for an orthogonal linear net, ...
JACOBIAN_SLOPES = {
    "linear/orthogonal": 0.0,
    "linear/gaussian": 1.0,
    "tanh/orthogonal": 0.05,
    "tanh/gaussian": 1.05,
    "relu/orthogonal": 1.0,
    "relu/gaussian": 2.0,
}


def _jacobian_numbers():
    """Measured moments equal to the predicted ones, with small standard errors."""
    depths = (2, 4, 8)
    measured, theory = {}, {}
    for net, slope in JACOBIAN_SLOPES.items():
        theory[net] = {str(d): {"mean": 1.0, "variance": slope * d} for d in depths}
        measured[net] = {
            str(d): {
                "mean": 1.0,
                "var": slope * d,
                "nvar": slope * d,
                "se_mean": 0.01,
                "se_nvar": 0.01,
            }
            for d in depths
        }
    return {
        "config": {"width": 128, "depths": depths},
        "measured": measured,
        "theory": theory,
        "isometry": {"max_abs_dev": 2e-6, "singular_values": 3072},
    }


def test_jacobian_spectra_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["jacobian_spectra"]
    claims = study.claims(_jacobian_numbers())
    assert _verdicts(claims) == [True] * 6
    assert claims[0].measured == (
        "max |s − 1| over 3072 singular values, depths [2, 4, 8] (float32): 2.0e-06"
    )
    assert claims[2].measured == "18/18 within tolerance; largest |Δ|/tolerance 0.00"
    _assert_same_after_json(study, _jacobian_numbers(), tmp_path)


def _isometry_broken(numbers):
    numbers["isometry"]["max_abs_dev"] = 1e-3


def _mean_off(numbers):
    numbers["measured"]["linear/orthogonal"]["4"]["mean"] = 1.5


def _nvar(net, factor, depths=("2", "4", "8"), shift=0.0):
    def spoil(numbers):
        for d in depths:
            numbers["measured"][net][d]["nvar"] = (
                numbers["measured"][net][d]["nvar"] * factor + shift
            )

    return spoil


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_isometry_broken, 0),
        (_mean_off, 1),
        (_nvar("linear/orthogonal", 1.0, ("8",), shift=0.5), 2),  # its slope is no claim's
        (_nvar("linear/gaussian", 1.5), (2, 3)),
        (_nvar("relu/orthogonal", 1.5), (2, 4)),
        (_nvar("relu/gaussian", 0.6), (2, 4)),
        (_nvar("tanh/gaussian", 0.5), (2, 5)),
    ],
)
def test_jacobian_spectra_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _jacobian_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["jacobian_spectra"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == list(np.atleast_1d(failing))


# signal_theory -------------------------------------------------------------------------------


def _summary(max_abs_err, max_err_over_tol, judged=900, entries=1000):
    return {
        "judged": judged,
        "entries": entries,
        "max_abs_err": max_abs_err,
        "mean_abs_err": max_abs_err / 10,
        "max_err_over_tol": max_err_over_tol,
        "within": max_err_over_tol <= 1,
    }


def _signal_theory_numbers():
    return {
        "config": {"depth": (8, 32), "scales": 8, "seeds": 1},
        "summary": {
            "pre_rms": _summary(0.05, 0.6),
            "post_rms": _summary(0.04, 0.5),
            "grad_gain": _summary(0.1, 0.8),
        },
        "tolerance_at_deepest_layer": {"tanh": 0.3, "relu": 0.4, "sigmoid": 0.2},
        "chi_product_error": [("tanh", 1.0, 0.3), ("relu", 2.0, 0.9), ("sigmoid", 4.0, 0.5)],
        "rates": [
            ("tanh", "ordered", 0.6, 0.5, -0.34, -0.3466),
            ("tanh", "chaotic", 4.0, 1.8, 0.30, 0.2939),
            ("sigmoid", "ordered", 1.0, 0.06, -1.40, -1.4067),
        ],
    }


def test_signal_theory_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["signal_theory"]
    claims = study.claims(_signal_theory_numbers())
    assert _verdicts(claims) == [True] * 3
    assert "χ product alone at depth 32: up to 0.90 (relu, σ_w² 2), a factor 7.9" in (
        claims[1].measured
    )
    _assert_same_after_json(study, _signal_theory_numbers(), tmp_path)


def _outside(name):
    def spoil(numbers):
        numbers["summary"][name] = _summary(0.2, 1.3)

    return spoil


def _few_judged(numbers):
    numbers["summary"]["post_rms"] = _summary(0.04, 0.5, judged=700)


def _chi_product_as_good(numbers):
    numbers["chi_product_error"] = [("tanh", 1.0, 0.15), ("relu", 2.0, 0.19)]


def _rate_off(numbers):
    numbers["rates"][1] = ("tanh", "chaotic", 4.0, 1.8, 0.35, 0.2939)


def _one_rate(numbers):
    numbers["rates"] = numbers["rates"][:1]


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_outside("pre_rms"), 0),
        (_outside("post_rms"), 0),
        (_few_judged, 0),
        (_outside("grad_gain"), 1),
        (_chi_product_as_good, 1),  # the plain chi product not worse than 2x the corrected one
        (_rate_off, 2),
        (_one_rate, 2),
    ],
)
def test_signal_theory_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _signal_theory_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["signal_theory"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == [failing]


# inspect -------------------------------------------------------------------------------------

_INSPECT_TOOLS = ("jax_debug_nans", "jax_debug_infs", "jax_debug_infs, disable_jit", "checkify")


def _found(primitive, line, alarm=True, runs=1, text="a message"):
    return {"alarm": alarm, "primitive": primitive, "line": line, "text": text, "python_runs": runs}


def _origin(kind, primitive, line, direction="forward", reaches=True, iteration=None, scope=""):
    return {
        "kind": kind,
        "primitive": primitive,
        "line": line,
        "text": "w = jnp.exp(logits)",
        "scope": scope,
        "direction": direction,
        "iteration": iteration,
        "index": [0],
        "reaches_output": reaches,
        "node": 3,
    }


def _inspect_case(ops, lines, origins, others, finite=False):
    chosen = next((o for o in origins if o["reaches_output"]), origins[0])
    found = _found(chosen["primitive"], chosen["line"], alarm=not finite)
    found.update(origins=origins, outputs_equal_plain_call=True)
    return {
        "issue": "jax-ml/jax#1",
        "title": "a case",
        "expected": {"ops": ops, "lines": lines, "finite_output": finite},
        "output_nonfinite": not finite,
        "tools": {"inspect": found, **dict(zip(_INSPECT_TOOLS, others, strict=True))},
    }


def _inspect_numbers():
    nothing = _found(None, None, alarm=False, text="no error")
    return {
        "exp_overflow_float16": math.log(65504.0),
        "cases": {
            "attention": {
                **_inspect_case(
                    ["exp", "reduce_sum"],
                    [87, 88],
                    [
                        _origin("inf", "exp", 87, scope="attention/softmax"),
                        _origin("nan", "div", 89, scope="attention/softmax"),
                    ],
                    [_found("div", 89, runs=2), nothing, _found("exp", 87), _found("div", 89)],
                ),
                "max_logit": 20.5,
            },
            "normalise": _inspect_case(
                ["div", "mul"],
                [96],
                [_origin("inf", "div", 96, "backward"), _origin("nan", "mul", 96, "backward")],
                [_found("mul", None, runs=2), nothing, _found("div", 96), _found("div", 96)],
            ),
            "vmap_cond": _inspect_case(
                ["div"],
                [123, 133],
                [_origin("nan", "div", 133, reaches=False)],
                [nothing, nothing, _found("div", 130), _found("div", None)],
                finite=True,
            ),
            "scan": _inspect_case(
                ["log"],
                [146],
                [_origin("nan", "log", 146, iteration=[2])],
                [_found("scan", 149, runs=2), nothing, nothing, _found("log", 146)],
            ),
        },
    }


def test_inspect_outcomes(studies):
    outcome = studies["inspect"].outcome
    expected = {"ops": ["exp"], "lines": [87], "finite_output": False}
    assert outcome(_found("exp", 87), expected) == "line"
    assert outcome(_found("exp", None), expected) == "op"
    assert outcome(_found("div", 87), expected) == "other"
    assert outcome(_found(None, None, alarm=False), expected) == "nothing"
    finite = {**expected, "finite_output": True}
    assert outcome(_found("exp", 87), finite) == "false alarm"
    assert outcome(_found(None, None, alarm=False), finite) == "silent"
    assert outcome(_found("exp", 87, alarm=False), finite) == "line"  # a discarded origin


def test_inspect_claims_pass_on_good_numbers(studies, tmp_path):
    study = studies["inspect"]
    claims = study.claims(_inspect_numbers())
    assert _verdicts(claims) == [True] * 7
    assert "inf from exp in 'attention/softmax' at line 87" in claims[0].measured
    assert "jax_debug_nans: 'a message' (line 89)" in claims[0].measured
    assert "right op and line in 4/4" in claims[2].measured
    assert "checkify: 2/4 op and line" in claims[3].measured
    _assert_same_after_json(study, _inspect_numbers(), tmp_path)


def _inspect_set(case, *path, value):
    def spoil(numbers):
        d = numbers["cases"][case]
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return spoil


def _first_origin(case, key, value):
    def spoil(numbers):
        numbers["cases"][case]["tools"]["inspect"]["origins"][0][key] = value

    return spoil


def _others_right(numbers):
    # checkify names the right line everywhere, inspect misses one case
    for e in numbers["cases"].values():
        right = e["expected"]
        e["tools"]["checkify"] = _found(
            right["ops"][0], right["lines"][0], not right["finite_output"]
        )
    numbers["cases"]["scan"]["tools"]["inspect"]["line"] = 150


@pytest.mark.parametrize(
    "spoil, failing",
    [
        (_first_origin("attention", "primitive", "div"), [0]),
        (_first_origin("attention", "line", 89), [0]),
        (_first_origin("attention", "scope", ""), [0]),
        (_inspect_set("attention", "max_logit", value=10.0), [0]),
        (_first_origin("normalise", "direction", "forward"), [1]),
        (_first_origin("normalise", "reaches_output", False), [1]),
        (_inspect_set("normalise", "output_nonfinite", value=False), [1]),
        (_inspect_set("normalise", "tools", "inspect", "line", value=90), [2]),
        (_inspect_set("attention", "tools", "inspect", "primitive", value="div"), [2]),
        (_others_right, [2, 3]),
        (_first_origin("vmap_cond", "reaches_output", True), [4]),
        (_inspect_set("vmap_cond", "output_nonfinite", value=True), [4]),
        (_inspect_set("scan", "tools", "inspect", "alarm", value=False), [2, 4]),
        (_first_origin("scan", "iteration", [3]), [5]),
        (_first_origin("scan", "iteration", None), [5]),
        (_inspect_set("scan", "tools", "inspect", "python_runs", value=2), [6]),
        (
            _inspect_set("normalise", "tools", "inspect", "outputs_equal_plain_call", value=False),
            [6],
        ),
    ],
)
def test_inspect_claims_fail_on_bad_numbers(studies, tmp_path, spoil, failing):
    numbers = _inspect_numbers()
    spoil(numbers)
    for n in (numbers, _stored(tmp_path, numbers)):
        verdicts = _verdicts(studies["inspect"].claims(n))
        assert [i for i, ok in enumerate(verdicts) if not ok] == failing
