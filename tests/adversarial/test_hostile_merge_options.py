"""Hostile merge options and numbers: weights and scalings that overflow float32 when folded,
factors whose merge overflows, seeds and switches of the wrong type, pattern keys in options."""

from __future__ import annotations

from pathlib import Path

import pytest
from cases import case
from harness import expect_error

POOL = "paths = write_pool(tmp, 2, modules=2, d=4, rank=2)\n"


@pytest.mark.parametrize("method", ["linear", "cat", "lego", "svd", "ties"])
def test_weight_that_overflows_when_folded(method: str, tmp_path: Path) -> None:
    opts = ", density=0.5" if method == "ties" else ""
    code = case(POOL + f"rw.merge(paths, {method!r}, weights=[1e300, 1]{opts})")
    expect_error(
        code,
        "OptionError",
        r"weight \d(\.\d+)?e\+300 of .*a00: weight × scaling = \d(\.\d+)?e\+300 overflows float32",
        cwd=tmp_path,
    )


@pytest.mark.parametrize("method", ["linear", "svd"])
def test_finite_factors_whose_merge_overflows(method: str, tmp_path: Path) -> None:
    # Each B is finite (3e38); their sum (weights 1, 1: the target is ΔW_0 + ΔW_1) is not.
    code = case(f"""
big = rw.Adapter.from_factors({{'m.q': (np.ones((2, 4), np.float32), np.full((4, 2), 3e38, np.float32))}})
big.save(tmp / 'b0'); big.save(tmp / 'b1')
rw.merge([tmp / 'b0', tmp / 'b1'], {method!r}, weights=[1, 1])
""")
    expect_error(
        code, "NonFiniteError", rf"module 'm\.q': the merge \({method}\) stage gave a non-finite value", cwd=tmp_path
    )


@pytest.mark.parametrize("method", ["lego", "svd", "aligned"])
def test_scaling_times_b_overflows_in_the_fold(method: str, tmp_path: Path) -> None:
    # lora_alpha 1e38 with r = 1: scaling 1e38 is a float32, B = 10 is finite, their product is not.
    code = case(f"""
h = {{A_KEY: {{'dtype': 'F32', 'shape': [1, 4], 'data_offsets': [0, 16]}},
     B_KEY: {{'dtype': 'F32', 'shape': [4, 1], 'data_offsets': [16, 32]}}}}
write_raw(tmp / 'a', h, np.full(8, 10, np.float32).tobytes(), {{**CONFIG, 'r': 1, 'lora_alpha': 1e38}})
rw.merge([tmp / 'a'], {method!r})
""")
    # The merge loop's check (NonFiniteError), or for lego the core's own fold check, which
    # refuses the overflow while building the unit matrix (AdapterFormatError naming the tensor).
    expect_error(
        code,
        "NonFiniteError" if method != "lego" else "RankwiseError",
        r"(the fold stage gives a non-finite value, from .*/a \(scaling 1e\+38 × weight 1 × B overflows"
        r"|a/adapter_model\.safetensors: tensor '.*lora_B\.weight': fold: .* overflows float32)",
        cwd=tmp_path,
    )


BAD_LEGO = [
    ({"seed": -1}, r"seed must be an int in \[0, 2\*\*64\), got -1"),
    ({"seed": 2**70}, r"seed must be an int in \[0, 2\*\*64\), got 1180591620717411303424"),
    ({"seed": 1.5}, r"seed must be an int"),
    ({"seed": True}, r"seed must be an int"),
    ({"canonicalize": "no"}, r"canonicalize must be true or false, got 'no'"),
    ({"tol": float("nan")}, r"tol must be a finite number >= 0, got nan"),
    ({"tol": -1}, r"tol must be a finite number >= 0"),
    ({"init": "bogus"}, r"init must be None or 'aligned', got 'bogus'"),
    ({"n_init": 0}, r"n_init must be a positive int, got 0"),
    ({"max_iter": -5}, r"max_iter must be a positive int"),
    ({"rank": {"(": 2}}, r"option rank: pattern key '\(' is not a valid regex"),
    ({"rank": {"(a+)+": 2}}, r"option rank: pattern key .* quantifier inside a quantified group"),
    ({"rank": 2**70}, r"rank k=1180591620717411303424 is larger than the 4 rank units"),
    ({"rank": float("nan")}, r"rank k must be a positive int, got nan"),
    ({"features": "cosine"}, r"features must be one of"),
    ({"bogus": 1}, r"method 'lego' has no option\(s\) bogus"),
]


@pytest.mark.parametrize(("opts", "match"), BAD_LEGO, ids=[repr(o) for o, _ in BAD_LEGO])
def test_lego_option(opts: dict, match: str, tmp_path: Path) -> None:
    expect_error(case(POOL + f"rw.merge(paths, 'lego', **{opts!r})"), "OptionError", match, cwd=tmp_path)


BAD_BASELINE = [
    ("dare_linear", {"density": 0.5, "seed": -1}, r"seed must be a non-negative int, got -1"),
    ("dare_linear", {"density": float("nan")}, r"density must be in \(0, 1\]"),
    ("ties", {"density": 2}, r"density must be in \(0, 1\]"),
    ("svd", {"svd_rank": 0}, r"svd_rank"),
    ("ties", {"density": 0.5, "majority_sign_method": "max"}, r"majority_sign_method must be"),
]


@pytest.mark.parametrize(("method", "opts", "match"), BAD_BASELINE, ids=[f"{m}-{o}" for m, o, _ in BAD_BASELINE])
def test_baseline_option(method: str, opts: dict, match: str, tmp_path: Path) -> None:
    expect_error(case(POOL + f"rw.merge(paths, {method!r}, **{opts!r})"), "OptionError", match, cwd=tmp_path)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ("[1.0, float('inf')]", r"weights must be finite"),
        ("[1.0]", r"got 1 weights for 2 adapters"),
        ("['a', 1]", r"weights must be numbers, got \['a', 1\]"),
    ],
    ids=["inf", "short", "text"],
)
def test_bad_weights(weights: str, match: str, tmp_path: Path) -> None:
    expect_error(case(POOL + f"rw.merge(paths, 'linear', weights={weights})"), "OptionError", match, cwd=tmp_path)


def test_unknown_method(tmp_path: Path) -> None:
    expect_error(
        case(POOL + "rw.merge(paths, 'avg')"), "OptionError", r"unknown merge method 'avg'; available:", cwd=tmp_path
    )


def test_prune_seed_out_of_range(tmp_path: Path) -> None:
    expect_error(
        case(POOL + "rw.prune(paths[0], 2, seed=-1)"),
        "OptionError",
        r"seed must be an int in \[0, 2\*\*64\)",
        cwd=tmp_path,
    )
