"""Exceptions of rankwise. Each also subclasses the builtin a user would naturally catch."""

from __future__ import annotations


class RankwiseError(Exception):
    """Base class of every error rankwise raises on purpose."""


class AdapterFormatError(RankwiseError, ValueError):
    """An adapter folder, config or safetensors file is malformed or uses an unsupported feature.

    The message names the file, the tensor key (where there is one) and what is wrong.
    """


class AdapterNotFoundError(AdapterFormatError, FileNotFoundError):
    """An adapter folder or one of its files does not exist."""


class IncompatibleAdaptersError(RankwiseError, ValueError):
    """Adapters that must fit together (a pool, a merge) do not: modules or shapes differ."""


class OptionError(RankwiseError, ValueError):
    """An option is out of its domain: of a merge, the k-means, SMoRA, a core call (k < 1,
    wrong number of weights, an unknown method or dtype, ...). The message names the option."""


#: The former name, kept for code that catches it: the same class.
MergeConfigError = OptionError


class OutputExistsError(RankwiseError, FileExistsError):
    """The output folder exists and is not empty (pass ``overwrite=True`` to replace it)."""


class OutputWriteError(RankwiseError, OSError):
    """Writing the output failed (disk full, permissions, ...); the message names the output.
    Nothing partial is left: the temp folder is removed and the target is as it was."""


class NonFiniteError(RankwiseError, ValueError):
    """A value to be written is not finite (NaN, or an overflow when folding, merging or casting
    to the output dtype): rankwise never writes one. The message names the module, the
    adapter(s) where known, and the stage."""


class InternalError(RankwiseError, RuntimeError):
    """A bug in rankwise (a panic in the Rust core, caught at the boundary). Please report it."""


__all__ = [
    "AdapterFormatError",
    "AdapterNotFoundError",
    "IncompatibleAdaptersError",
    "InternalError",
    "MergeConfigError",
    "NonFiniteError",
    "OptionError",
    "OutputExistsError",
    "OutputWriteError",
    "RankwiseError",
]
