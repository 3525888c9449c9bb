"""Optional per-stage timing of the :class:`~fiftyone_cass.models.segmenter.Segmenter` pipeline.

Off by default and free when off: the segmenter wraps each stage in ``with self._stage(name):``,
which is a shared no-op context unless a :class:`StageTimer` is attached::

    seg.profiler = StageTimer(seg.device)
    seg(images)
    print(seg.profiler.summary())     # {"clip": seconds, "dino": seconds, ...}
    seg.profiler = None

When on, every stage boundary synchronises the device (``torch.cuda.synchronize``), so the
figures are true per-stage times but the pipeline loses its CPU/GPU overlap: measure throughput
with the profiler off and the stage split with it on.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator, Optional

import torch

#: the shared no-op context used when no profiler is attached
NO_STAGE = contextlib.nullcontext()


class StageTimer:
    """Accumulates device-synchronised wall time, process CPU time (all threads) and call counts
    per stage name. Stages must not nest (nested time would be counted twice). CPU time is the
    steadier figure on a machine shared with other jobs, where wall time includes waiting for a
    core."""

    def __init__(self, device: Optional[torch.device] = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seconds: Dict[str, float] = defaultdict(float)
        self.cpu_seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start
            self.cpu_seconds[name] += time.process_time() - cpu
            self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.cpu_seconds.clear()
        self.calls.clear()

    def summary(self) -> Dict[str, float]:
        """Seconds per stage, in the order the stages first ran."""
        return dict(self.seconds)
