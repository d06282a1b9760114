"""The command line: inspect, merge (progress, summary, errors), demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peft_factory import make_adapter
from rankwise.cli import main
from raw_adapter import write_pool


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("cli")
    return [
        make_adapter(root / f"a{i}", seed=i, r=4, target_modules=["q_proj", "v_proj"], dtype="F16") for i in range(2)
    ]


def test_inspect_prints_a_table(two: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(two[0])]) == 0
    out = capsys.readouterr().out
    assert "4 modules" in out
    header = next(line for line in out.splitlines() if line.startswith("module"))
    assert header.split() == ["module", "count", "rank", "alpha", "scaling", "out×in", "dtype", "params"]
    q = next(line for line in out.splitlines() if line.startswith("q_proj")).split()
    assert q == ["q_proj", "2", "4", "8", "2", "32×32", "F16", "512"]


def test_merge_writes_a_peft_folder_and_summarises(two: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    res = run("merge", *map(str, two), "-o", str(out), "--rank", "3", "--weights", "1,0.5", "--seed", "2")
    assert res.returncode == 0, res.stderr
    assert "merged 2 adapters (4 modules, source ranks [4]) with lego -> rank 3, F16" in res.stdout
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 3
    assert "merge (lego)" in res.stderr  # the progress bar


def test_merge_bad_input_is_one_line_exit_1(two: list[Path], tmp_path: Path) -> None:
    res = run("merge", *map(str, two), "-o", str(tmp_path / "m"), "--rank", "100")
    assert res.returncode == 1
    assert res.stderr.strip().startswith("rankwise: error: module '")
    assert "larger than the 8 rank units" in res.stderr and "Traceback" not in res.stderr
    res = run("merge", str(tmp_path / "missing"), "-o", str(tmp_path / "m"))
    assert res.returncode == 1 and "adapter folder does not exist" in res.stderr
    debug = run("--debug", "merge", str(tmp_path / "missing"), "-o", str(tmp_path / "m"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert not (tmp_path / "m").exists()


def test_demo_runs_with_numpy_only(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"  # importing torch would fail
        "from rankwise.cli import main; raise SystemExit(main(['demo', '-o', sys.argv[1]]))"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "skills recovered" in res.stdout
    best = [
        float(line.split("min ")[1].split(",")[0]) for line in res.stdout.splitlines() if "skills recovered" in line
    ]
    assert len(best) == 4 and min(best) > 0.95
    assert (tmp_path / "d" / "adapter_model.safetensors").exists()


def test_import_does_not_load_torch() -> None:
    code = "import sys, rankwise; rankwise.AdapterPool; rankwise.merge; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr


def test_same_command_at_one_and_two_threads_gives_identical_folders(tmp_path: Path) -> None:
    paths = write_pool(tmp_path / "pool", 6, modules=3, d=48, rank=4)
    outs = []
    for threads in (1, 2, 2):
        out = tmp_path / f"m{len(outs)}"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "rankwise",
                "--threads",
                str(threads),
                "merge",
                *map(str, paths),
                "-o",
                str(out),
                "--rank",
                "6",
                "--seed",
                "3",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outs[0] == outs[1] == outs[2]


def test_inspect_reports_every_folder_and_fails_at_the_end(
    two: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    assert main(["inspect", str(two[0]), str(bad), str(two[1])]) == 1
    out, err = capsys.readouterr()
    assert out.count("4 modules") == 2 and f"{bad}  FAILED: " in out
    assert "adapter_config.json: missing" in err and "1 adapter folder(s) could not be read" in err


def test_merge_heads_option(tmp_path: Path) -> None:
    from raw_adapter import CONFIG, good_header, write_raw

    header, data = good_header()
    n = len(data)
    header["base_model.model.classifier.weight"] = {"dtype": "F32", "shape": [2], "data_offsets": [n, n + 8]}
    folders = [
        str(write_raw(tmp_path / f"h{j}", header, data + bytes(8), config=dict(CONFIG, modules_to_save=["classifier"])))
        for j in range(2)
    ]
    res = run("merge", *folders, "-o", str(tmp_path / "m"), "--method", "linear", "-q")
    assert res.returncode == 1 and "full-copy heads (classifier.weight)" in res.stderr and "--heads" in res.stderr
    res = run("merge", *folders, "-o", str(tmp_path / "m"), "--method", "linear", "-q", "--heads", "1")
    assert res.returncode == 0, res.stderr
    assert "heads (1): classifier.weight" in res.stdout
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["classifier"]


def test_merge_checks_the_output_folder_before_merging(two: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # rank 100 would fail in the merge: the folder's error shows the merge never ran
    res = run("merge", *map(str, two), "-o", str(out), "--rank", "100", "-q")
    assert res.returncode == 1 and "folder is not empty" in res.stderr and "rank units" not in res.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
