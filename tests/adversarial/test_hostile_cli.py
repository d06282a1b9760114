"""The command line under hostile arguments: one line on stderr, exit 2 for usage errors (argparse)
and 1 for bad input, never a traceback; inputs intact; file text printed escaped."""

from __future__ import annotations

from pathlib import Path

import pytest
from cases import case
from harness import expect_cli_error, expect_ok, run_cli, tree_digest


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    expect_ok(case("write_pool(tmp / 'runs', 2, modules=2, d=4, rank=2)"), cwd=tmp_path)
    return tmp_path / "runs"


def _merge(runs: Path, *extra: str) -> list[str]:
    return ["merge", str(runs / "a00"), str(runs / "a01"), "-o", str(runs.parent / "out"), "-q", *extra]


USAGE = [
    (["--threads", "-1"], r"--threads: expected an integer >= 0, got -1"),
    (["--seed", "-1"], r"--seed: expected an integer >= 0, got -1"),
    (["--seed", "x"], r"--seed: expected an integer >= 0, got 'x'"),
    (["--rank", "0"], r"--rank: expected an integer >= 1, got 0"),
]


@pytest.mark.parametrize(("extra", "match"), USAGE, ids=[" ".join(e) for e, _ in USAGE])
def test_usage_error_exit_2(extra: list[str], match: str, runs: Path) -> None:
    args = ["--threads", "-1", *_merge(runs)] if extra[0] == "--threads" else _merge(runs, *extra)
    p = run_cli(args)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert expect_cli_error(args, match)
    assert not (runs.parent / "out").exists()


BAD = [
    (["--weights", "1,abc"], r"rankwise: error: --weights takes comma-separated numbers, got '1,abc'"),
    (["--weights", "1,1e400"], r"rankwise: error: weights must be finite"),
    (["--option", "canonicalize=no"], r"rankwise: error: canonicalize must be true or false, got 'no'"),
    (["--option", 'rank={"(": 2}'], r"rankwise: error: option rank: pattern key '\(' is not a valid regex"),
    (["--option", "=3"], r"rankwise: error: --option takes key=value, got '=3'"),
    (["--option", "bogus=1"], r"rankwise: error: method 'lego' has no option\(s\) bogus"),
    (["--method", "avg"], r"rankwise: error: unknown merge method 'avg'"),
    (["--dtype", "int8"], r"rankwise: error: unknown dtype 'int8'"),
    (["--seed", str(2**70)], r"rankwise: error: seed must be an int in \[0, 2\*\*64\)"),
    (["--option", "tol=NaN"], r"rankwise: error: tol must be a finite number >= 0, got nan"),
]


@pytest.mark.parametrize(("extra", "match"), BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_option_exit_1(extra: list[str], match: str, runs: Path) -> None:
    before = tree_digest(runs)
    p = run_cli(_merge(runs, *extra))
    assert p.returncode == 1, p.stderr
    expect_cli_error(_merge(runs, *extra), match)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert tree_digest(runs) == before and not (runs.parent / "out").exists()


@pytest.mark.parametrize("out", [".", "a00", "a00/sub"])
def test_merge_into_its_inputs_refused_before_loading(out: str, runs: Path) -> None:
    (runs / "notes.txt").write_text("keep")
    before = tree_digest(runs)
    args = ["merge", str(runs / "a*"), "-o", str(runs / out), "--overwrite", "-q"]
    expect_cli_error(args, r"the output folder (contains|is|is inside) the input .*a0[01]; writing it would destroy")
    assert tree_digest(runs) == before


def test_inspect_escapes_terminal_sequences(tmp_path: Path) -> None:
    code = case("""
h, d = good_header()
esc = 'model.\\x1b[31mred\\x1b]0;pwned\\x07.q_proj'
h = {f'base_model.model.{esc}.lora_A.weight': h[A_KEY], f'base_model.model.{esc}.lora_B.weight': h[B_KEY]}
write_raw(tmp / 'a', h, d, {**CONFIG, 'base_model_name_or_path': '\\x1b[2J'})
""")
    expect_ok(code, cwd=tmp_path)
    p = run_cli(["inspect", "--all", str(tmp_path / "a")])
    assert p.returncode == 0, p.stderr
    assert "\x1b" not in p.stdout and "\x07" not in p.stdout
    assert r"model.\x1b[31mred\x1b]0;pwned\x07.q_proj" in p.stdout and r"\x1b[2J" in p.stdout


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("'[' * 100000 + ']' * 100000", r"JSON nested too deeply"),
        ("json.dumps({**CONFIG, 'rank_pattern': {'(a+)+$': 2}})", r"quantifier inside a quantified group"),
        ("json.dumps({**CONFIG, 'r': float('nan')})", r"'r' must be a finite positive number, got nan"),
    ],
    ids=["deep", "backtracking", "r-nan"],
)
def test_inspect_hostile_config(config: str, match: str, tmp_path: Path) -> None:
    expect_ok(case(f"adapter('a')\n(tmp / 'a' / 'adapter_config.json').write_text({config})"), cwd=tmp_path)
    err = expect_cli_error(
        ["inspect", str(tmp_path / "a")], r"rankwise: error: .*a/adapter_config\.json: .*" + match, timeout=30
    )
    assert len(err.strip().splitlines()) == 1


def test_inspect_hub_id(tmp_path: Path) -> None:
    expect_cli_error(["inspect", "someone/some-lora"], r"rankwise reads local folders", cwd=tmp_path)


def test_inspect_bracket_folder_literally(tmp_path: Path) -> None:
    expect_ok(case("adapter('run[1]'); adapter('run1')"), cwd=tmp_path)
    p = run_cli(["inspect", str(tmp_path / "run[1]")])
    assert p.returncode == 0 and "run[1]" in p.stdout and "/run1 " not in p.stdout, p.stdout + p.stderr
