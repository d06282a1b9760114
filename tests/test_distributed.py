"""Merges on a local Ray cluster give the local merge's bytes, for every method; task errors
come back as the typed rankwise exceptions a local run raises."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from rankwise.distributed import module_groups
from rankwise.methods import METHODS
from raw_adapter import put_nan, write_pool

ray = pytest.importorskip("ray")


def _options(method: str) -> dict[str, object]:
    """Options that every method taking them needs for this pool (the rest stay at defaults)."""
    params = METHODS[method].params
    return {k: v for k, v in {"rank": 6, "density": 0.5}.items() if k in params}


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_pool(tmp_path_factory.mktemp("ray_pool"), 3, modules=5, d=24, rank=4, seed=3)


def _factors(a: rw.Adapter) -> dict[str, tuple[bytes, bytes]]:
    return {m: tuple(x.tobytes() for x in a.factors(m)) for m in a.modules}  # type: ignore[misc]


def test_module_groups_cover_every_module_once() -> None:
    for n, t in [(1, 4), (5, 2), (7, 7), (64, 8), (3, 100)]:
        groups = module_groups(n, t)
        assert [i for g in groups for i in g] == list(range(n))
        sizes = [len(g) for g in groups]
        assert len(groups) == min(n, t) and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("method", sorted(METHODS))
def test_ray_merge_gives_the_local_bytes(cluster: None, pool_dirs: list[Path], method: str) -> None:
    opts = _options(method)
    w = [0.5, 0.3, 0.2]
    local = rw.merge(pool_dirs, method, weights=w, **opts)
    remote = rw.merge(pool_dirs, method, weights=w, executor="ray", **opts)
    assert remote.merge_info["executor"] == "ray"
    assert list(remote.modules) == list(local.modules)
    assert _factors(remote) == _factors(local)


def test_a_streamed_ray_merge_gives_the_local_bytes(cluster: None, pool_dirs: list[Path]) -> None:
    """memory_limit reaches the workers: the modules stream there as locally, same bytes."""
    local = rw.merge(pool_dirs, "lego", rank=6, memory_limit=2000)
    remote = rw.merge(pool_dirs, "lego", rank=6, memory_limit=2000, executor="ray")
    assert local.merge_info["streamed"] == remote.merge_info["streamed"] == list(local.modules)
    assert _factors(remote) == _factors(local)


def test_progress_reports_every_module_in_order(cluster: None, pool_dirs: list[Path]) -> None:
    seen: list[tuple[int, int, str]] = []
    merged = rw.merge(pool_dirs, "linear", executor="ray", progress=lambda i, n, m: seen.append((i, n, m)))
    assert seen == [(i + 1, len(merged.modules), m) for i, m in enumerate(merged.modules)]


def test_a_nan_in_a_worker_is_the_local_error(cluster: None, tmp_path: Path) -> None:
    dirs = write_pool(tmp_path, 2, modules=3, d=8, rank=2, seed=1)
    target, key = put_nan(dirs[1], 2, "b")
    with pytest.raises(rw.AdapterFormatError) as local:
        rw.merge(dirs, "linear")
    with pytest.raises(rw.AdapterFormatError) as remote:
        rw.merge(dirs, "linear", executor="ray")
    assert str(target) in str(remote.value) and key in str(remote.value)
    assert type(remote.value) is type(local.value)


def test_a_file_gone_before_the_task_names_it(cluster: None, tmp_path: Path) -> None:
    dirs = write_pool(tmp_path, 2, modules=2, d=8, rank=2, seed=2)
    pool = rw.AdapterPool.load(dirs)
    (dirs[0] / "adapter_model.safetensors").unlink()
    with pytest.raises(rw.AdapterFormatError, match=str(dirs[0])):
        rw.merge(pool, "linear", executor="ray")


def test_in_memory_adapters_and_bad_executor_are_refused(pool_dirs: list[Path]) -> None:
    with pytest.raises(rw.OptionError, match="executor must be"):
        rw.merge(pool_dirs, "linear", executor="dask")
    mem = rw.Adapter.from_factors({"m": (np.ones((2, 4), np.float32), np.ones((4, 2), np.float32))})
    with pytest.raises(rw.OptionError, match="loaded from files"):
        rw.merge(rw.AdapterPool([mem]), "linear", executor="ray")


def test_cli_merge_on_ray(pool_dirs: list[Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "merged"
    args = [*map(str, pool_dirs), "-o", str(out), "--method", "linear", "-q", "--ray"]
    p = subprocess.run([sys.executable, "-m", "rankwise", "merge", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    local = rw.merge(pool_dirs, "linear").save(tmp_path / "local")
    assert _factors(rw.load_adapter(out)) == _factors(rw.load_adapter(local))


def test_a_worker_that_dies_is_retried(
    cluster: None, pool_dirs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first task to run kills its worker process (as an OOM kill or a lost node would); Ray
    starts another worker and retries the task, and the merge still gives the local bytes."""
    import rankwise.distributed as dist

    real = dist._merge_group  # pickled by reference: the worker imports the real function
    marker = tmp_path / "died"

    def dies_once(*args: object, **kwargs: object) -> object:  # a closure: pickled by value
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(9)
        return real(*args, **kwargs)

    monkeypatch.setattr(dist, "_merge_group", dies_once)
    local = rw.merge(pool_dirs, "lego", rank=6)
    remote = rw.merge(pool_dirs, "lego", rank=6, executor="ray")
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker did die
    assert _factors(remote) == _factors(local)


def test_a_worker_that_always_dies_is_a_rankwise_error(
    cluster: None, pool_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past Ray's retries, a lost worker is a RankwiseError naming the modules of the task."""
    import rankwise.distributed as dist

    def dies(*args: object, **kwargs: object) -> object:
        os._exit(9)

    monkeypatch.setattr(dist, "_merge_group", dies)
    monkeypatch.setattr(dist, "MAX_RETRIES", 0)
    with pytest.raises(rw.RankwiseError, match=r"the Ray task merging modules '.+'\.\.'.+' failed 1 times"):
        rw.merge(pool_dirs, "linear", executor="ray")
