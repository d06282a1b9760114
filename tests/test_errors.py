"""The error classes (errors.py): each also a builtin; a panic in the core is an InternalError."""

from __future__ import annotations

import numpy as np
import pytest

import rankwise as rw
from rankwise import _core
from rankwise.merging import get_method
from rankwise.smora import SMoRAConfig


def test_a_rust_panic_becomes_internal_error() -> None:
    with pytest.raises(rw.InternalError, match="internal error in _panic_in_worker: deliberate test panic"):
        _core._panic_in_worker()
    with pytest.raises(RuntimeError):  # the builtin it also subclasses
        _core._panic_in_worker()
    assert rw.get_num_threads() >= 1  # the pool survives


def test_option_error_is_a_value_error_and_keeps_its_former_name() -> None:
    assert rw.MergeConfigError is rw.OptionError
    assert issubclass(rw.OptionError, rw.RankwiseError) and issubclass(rw.OptionError, ValueError)
    # One class whoever raises it: the merge loop, the core (k > n is checked in Rust), SMoRA.
    with pytest.raises(rw.OptionError, match="unknown merge method 'nope'"):
        get_method("nope")
    with pytest.raises(rw.OptionError, match="larger than the n=3"):
        rw.kmeans(np.zeros((3, 2), dtype=np.float32), 4)
    with pytest.raises(rw.OptionError, match="SMoRAConfig.rank"):
        SMoRAConfig(rank=0)
