"""The CLI on image-model LoRA files: inspect shows the layout and conv kernels, merge writes the
inputs' layout or the one asked for, and the files it writes read back with their merged deltas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
from image_models import kohya_file, tiny_text_encoder, tiny_unet

import rankwise as rw
from rankwise.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("kohya")
    unet, te = tiny_unet(), tiny_text_encoder()
    return [kohya_file(d / f"{i}.safetensors", unet, te, seed=30 + i) for i in range(2)]


def test_inspect_shows_layout_and_conv_kernels(files: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(files[0])]) == 0
    out = capsys.readouterr().out
    assert "kohya layout" in out
    assert "8×8×3×3" in out  # down_blocks.0 resnet conv1: out × in × kh × kw
    assert main(["inspect", "--format", "diffusers", str(files[0])]) == 1
    assert "not a LoRA factor of the diffusers layout" in capsys.readouterr().err


@pytest.mark.parametrize(("fmt", "name"), [(None, "m.safetensors"), ("diffusers", "m_diffusers")])
def test_merge_writes_the_layout(tmp_path: Path, files: list[Path], fmt: str | None, name: str) -> None:
    out = tmp_path / name
    argv = ["merge", *map(str, files), "-o", str(out), "--method", "cat", "--weights", "0.5,1.5", "-q"]
    assert main(argv + (["--output-format", fmt] if fmt else [])) == 0
    merged = rw.load_adapter(out)
    assert merged.format == (fmt or "kohya")
    pool = rw.AdapterPool.load(files)
    for n in pool.modules:
        want = 0.5 * pool[0].delta(n) + 1.5 * pool[1].delta(n)
        np.testing.assert_allclose(merged.delta(n), want, rtol=1e-5, atol=1e-6)
