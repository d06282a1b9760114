"""A module's unit features in blocks of consecutive adapters, for LEGO's streamed path: a
``RowBlocks`` source (``rankwise.streaming_kmeans``) that builds each block from the mapped
files when asked and then drops those files' mapped pages, which count in the resident set."""

from __future__ import annotations

import numpy as np

from .contract import ModuleContext


class UnitBlocks:
    """Blocks of at most ``rows_per_block`` unit rows (whole adapters; one adapter per block when
    a single adapter has more rows), each built anew by every pass."""

    def __init__(self, ctx: ModuleContext, *, canonical: bool, rows_per_block: int) -> None:
        self.ctx = ctx
        self.canonical = canonical
        self.d = sum(ctx.shape)
        ranks = ctx.ranks
        self.n = sum(ranks)
        self.adapter_ranges: list[slice] = []
        self.bounds: list[tuple[int, int]] = []
        start_a, start_r, rows = 0, 0, 0
        for j, r in enumerate(ranks):
            if rows and rows + r > rows_per_block:
                self._close(start_a, j, start_r, rows)
                start_a, start_r, rows = j, start_r + rows, 0
            rows += r
        self._close(start_a, len(ranks), start_r, rows)

    def _close(self, a0: int, a1: int, r0: int, rows: int) -> None:
        self.adapter_ranges.append(slice(a0, a1))
        self.bounds.append((r0, r0 + rows))

    def __len__(self) -> int:
        return len(self.bounds)

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Block b's normalized rows and part norms ``(x, norms)``."""
        adapters = self.adapter_ranges[b]
        x, norms = self.ctx.unit_features(canonical=self.canonical, adapters=adapters)
        for a in self.ctx.pool.adapters[adapters]:
            if a.source is not None:
                a.source.release()
        return x, norms

    def rows(self, b: int) -> np.ndarray:
        return self.block(b)[0]
