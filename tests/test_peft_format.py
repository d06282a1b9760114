"""The PEFT folder format (peft_format.py): the config, the pairing of keys into modules and the
module table, on broken folders: the exception type, and a message naming file, key and problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rankwise as rw
from peft_factory import make_adapter
from raw_adapter import A_KEY, B_KEY, CONFIG, good_header, write_raw


def test_a_well_formed_raw_adapter_loads(tmp_path: Path) -> None:
    """The control case for the broken ones below."""
    adapter = rw.load_adapter(write_raw(tmp_path / "ok", *good_header()))
    assert list(adapter.modules) == ["model.layers.0.self_attn.q_proj"]
    assert adapter.modules["model.layers.0.self_attn.q_proj"].scaling == 2.0


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(rw.AdapterNotFoundError, match=r"nope: adapter folder does not exist"):
        rw.load_adapter(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):  # also the builtin a user would catch
        rw.load_adapter(tmp_path / "nope")


def test_missing_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(rw.AdapterNotFoundError, match=r"adapter_config.json: missing"):
        rw.load_adapter(tmp_path / "a")


def test_config_not_json(tmp_path: Path) -> None:
    folder = write_raw(tmp_path / "a", *good_header())
    (folder / "adapter_config.json").write_text("{'r': 8,")
    with pytest.raises(rw.AdapterFormatError, match=r"adapter_config.json: not valid JSON"):
        rw.load_adapter(folder)


def test_missing_weights_and_pickled_weights(tmp_path: Path) -> None:
    folder = write_raw(tmp_path / "a", *good_header())
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(rw.AdapterNotFoundError, match=r"adapter_model.safetensors: missing"):
        rw.load_adapter(folder)
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(rw.AdapterFormatError, match=r"adapter_model.bin: pickled weights are not read"):
        rw.load_adapter(folder)


def test_unsupported_dtype(tmp_path: Path) -> None:
    header, data = good_header()
    header[A_KEY]["dtype"] = "I32"
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{A_KEY}': dtype I32 is not supported"):
        rw.load_adapter(write_raw(tmp_path / "b", header, data))


def test_lora_a_without_lora_b(tmp_path: Path) -> None:
    header, data = good_header()
    del header[B_KEY]
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{A_KEY}' has no matching lora_B"):
        rw.load_adapter(write_raw(tmp_path / "a", header, data[:32]))


def test_rank_mismatch_between_a_and_b(tmp_path: Path) -> None:
    header, data = good_header()
    header[B_KEY]["shape"] = [8, 1]
    with pytest.raises(rw.AdapterFormatError, match=rf"tensor '{B_KEY}': rank mismatch: lora_B has shape \[8, 1\]"):
        rw.load_adapter(write_raw(tmp_path / "a", header, data))


def test_rank_disagrees_with_config(tmp_path: Path) -> None:
    cfg = dict(CONFIG, r=3)
    with pytest.raises(
        rw.AdapterFormatError, match=rf"tensor '{A_KEY}': rank 2 but .*adapter_config.json gives this module rank 3"
    ):
        rw.load_adapter(write_raw(tmp_path / "a", *good_header(), config=cfg))


def test_unsupported_features_are_named(tmp_path: Path) -> None:
    dora = make_adapter(tmp_path / "dora", r=2, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(rw.AdapterFormatError, match=r"adapter_config.json: DoRA \(use_dora=true\) is not supported"):
        rw.load_adapter(dora)
    # The same adapter with the flag removed is still caught by its tensors.
    cfg = json.loads((dora / "adapter_config.json").read_text())
    cfg["use_dora"] = False
    (dora / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(rw.AdapterFormatError, match=r"tensor '.*lora_magnitude_vector.*': DoRA is not supported"):
        rw.load_adapter(dora)
    folder = write_raw(tmp_path / "bias", *good_header(), config=dict(CONFIG, bias="all"))
    with pytest.raises(rw.AdapterFormatError, match=r"bias='all'"):
        rw.load_adapter(folder)
    folder = write_raw(tmp_path / "ia3", *good_header(), config=dict(CONFIG, peft_type="IA3"))
    with pytest.raises(rw.AdapterFormatError, match=r"peft_type is IA3"):
        rw.load_adapter(folder)


def test_git_lfs_pointer_is_named(tmp_path: Path) -> None:
    folder = write_raw(tmp_path / "lfs", *good_header())
    (folder / "adapter_model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1048576\n"
    )
    with pytest.raises(
        rw.AdapterFormatError,
        match=r"adapter_model.safetensors: a Git LFS pointer, not the weights: run `git lfs pull`",
    ):
        rw.load_adapter(folder)


def test_folder_of_adapter_folders_suggests_the_glob(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_raw(tmp_path / "runs" / name, *good_header())
    with pytest.raises(
        rw.AdapterNotFoundError,
        match=r"holds 2 adapter folder\(s\) \(a, b\): to use them all, pass the glob '.*runs/\*'",
    ):
        rw.load_adapter(tmp_path / "runs")
    assert len(rw.AdapterPool.load(str(tmp_path / "runs" / "*"))) == 2  # the suggested glob works


def test_hub_id_says_rankwise_reads_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        rw.AdapterNotFoundError,
        match=r"user/some-lora: adapter folder does not exist; it looks like a Hugging Face Hub id, but rankwise "
        r"reads local files only: download it first "
        r"\(`huggingface-cli download user/some-lora --local-dir some-lora`\)",
    ):
        rw.load_adapter("user/some-lora")
    with pytest.raises(rw.AdapterNotFoundError, match=r"nope/a/b: adapter folder does not exist$"):
        rw.load_adapter("nope/a/b")


def test_dora_and_target_parameters_refusals_say_why(tmp_path: Path) -> None:
    folder = write_raw(tmp_path / "dora", *good_header(), config=dict(CONFIG, use_dora=True))
    with pytest.raises(
        rw.AdapterFormatError, match=r"DoRA \(use_dora=true\) is not supported by rankwise: .*base model's weights"
    ):
        rw.load_adapter(folder)
    folder = write_raw(
        tmp_path / "moe", *good_header(), config=dict(CONFIG, target_parameters=["experts.gate_up_proj"])
    )
    with pytest.raises(
        rw.AdapterFormatError,
        match=r"target_parameters \(LoRA on parameters such as MoE expert tensors\) is not supported by rankwise yet",
    ):
        rw.load_adapter(folder)


def test_unlisted_known_head_and_listed_head(tmp_path: Path) -> None:
    """Older PEFT saved a ``classifier`` without listing it; a listed module of any name is a head too."""
    header, data = good_header()
    n = len(data)
    header["base_model.model.classifier.out_proj.weight"] = {
        "dtype": "F32",
        "shape": [2, 4],
        "data_offsets": [n, n + 32],
    }
    header["base_model.model.my_head.bias"] = {"dtype": "F32", "shape": [2], "data_offsets": [n + 32, n + 40]}
    values = np.arange(10, dtype=np.float32)
    folder = write_raw(
        tmp_path / "h", header, data + values.tobytes(), config=dict(CONFIG, modules_to_save=["my_head"])
    )
    adapter = rw.load_adapter(folder)
    assert {n: t.module for n, t in adapter.heads.items()} == {
        "classifier.out_proj.weight": "classifier",
        "my_head.bias": "my_head",
    }
    np.testing.assert_array_equal(adapter.head("classifier.out_proj.weight"), values[:8].reshape(2, 4))
    np.testing.assert_array_equal(adapter.head("my_head.bias"), values[8:])
    folder = write_raw(tmp_path / "h2", header, data + values.tobytes())  # my_head not listed now
    with pytest.raises(
        rw.AdapterFormatError,
        match=r"tensor 'base_model.model.my_head.bias' \(F32, shape \[2\]\) "
        r"is neither a LoRA factor.*no modules_to_save",
    ):
        rw.load_adapter(folder)
