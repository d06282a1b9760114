from __future__ import annotations

import os

# Small thread counts keep the suite's timing stable on 2-core CI machines.
os.environ.setdefault("RANKWISE_NUM_THREADS", "2")
