"""Where the spectral step's small symmetric eigen-decompositions run.

The spectral step decomposes 24 Gram matrices of 64 x 64 per window (12 DINO heads, 12 CLIP
heads): thousands per batch. On a CPU, ``torch.linalg.eigh`` does them in one call. On CUDA,
PyTorch sends batches of matrices larger than 32 x 32 to a loop of one cuSOLVER call per matrix
(pytorch/pytorch#175585), which can cost more than the two backbones together. The host's
LAPACK takes 0.1-0.3 ms per matrix on one core, and the matrices are independent, so a
thread pool over the host's cores may be the faster place, or not: it depends on the PyTorch
and CUDA build and on the machine.

``placement``:

* ``"device"``: ``torch.linalg.eigh`` / ``eigvalsh`` where the tensor is.
* ``"cpu"``: copy to the host, decompose in chunks on a thread pool (LAPACK releases the GIL),
  copy back.
* ``"auto"`` (default): ``"cpu"`` for CPU tensors (the pool gives bit-identical results, since
  each matrix goes through the same LAPACK routine, and uses every core where one batched
  call uses one). For an accelerator, the first call of a
  given (device, size, dtype, vectors-or-not) times both on that call's matrices and keeps the
  faster; :func:`placement_choices` reports what was measured. The two agree to round-off
  (LAPACK-grade solvers both), and the head assignment that follows breaks ties canonically, so
  the choice changes speed, not labels.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Tuple

import torch

PLACEMENTS = ("auto", "device", "cpu")
logger = logging.getLogger("fiftyone_cass")

_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()
_choices: Dict[Tuple, Dict] = {}


def host_workers() -> int:
    """Threads of the host pool: the cores torch may use, at most the machine's."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _host_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=host_workers(), thread_name_prefix="cass-eigh")
        return _pool


def _solve(a: torch.Tensor, vectors: bool):
    return torch.linalg.eigh(a) if vectors else torch.linalg.eigvalsh(a)


def eigh_on_host(a: torch.Tensor, vectors: bool = True):
    """``eigh`` (``vectors``) or ``eigvalsh`` of ``a`` ``(..., n, n)`` computed on the host in
    chunks across a thread pool; results go back to ``a``'s device."""
    batch_shape, n = a.shape[:-2], a.shape[-1]
    flat = a.detach().to("cpu").reshape(-1, n, n)
    workers = host_workers()
    count = flat.shape[0]
    if workers == 1 or count < 2 * workers:
        parts = [_solve(flat, vectors)]
    else:
        # each chunk is decomposed with one intra-op thread: the pool supplies the parallelism
        bounds = [(count * i) // workers for i in range(workers + 1)]

        def solve_chunk(lo_hi):
            lo, hi = lo_hi
            return _solve(flat[lo:hi], vectors)

        parts = list(_host_pool().map(solve_chunk, zip(bounds[:-1], bounds[1:])))
    if vectors:
        vals = torch.cat([p[0] for p in parts]).reshape(*batch_shape, n)
        vecs = torch.cat([p[1] for p in parts]).reshape(*batch_shape, n, n)
        return vals.to(a.device, non_blocking=True), vecs.to(a.device, non_blocking=True)
    return torch.cat(parts).reshape(*batch_shape, n).to(a.device, non_blocking=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_placement(a: torch.Tensor, vectors: bool = True) -> Dict:
    """Times ``"device"`` and ``"cpu"`` on ``a`` (after one untimed call of each) and returns
    ``{"device_ms", "cpu_ms", "choice", "max_abs_diff"}``."""
    out = {}
    results = {}
    for name, fn in (("device", lambda: _solve(a, vectors)), ("cpu", lambda: eigh_on_host(a, vectors))):
        fn()
        _sync(a.device)
        t0 = time.perf_counter()
        results[name] = fn()
        _sync(a.device)
        out[f"{name}_ms"] = 1000.0 * (time.perf_counter() - t0)
    dv = results["device"][0] if vectors else results["device"]
    cv = results["cpu"][0] if vectors else results["cpu"]
    out["max_abs_diff"] = float((dv - cv).abs().max()) if dv.numel() else 0.0
    out["choice"] = "cpu" if out["cpu_ms"] < out["device_ms"] else "device"
    return out


def placement_choices() -> Dict[str, Dict]:
    """What ``"auto"`` measured and chose so far, keyed by ``device/n/dtype/vectors``."""
    return {"/".join(str(x) for x in key): dict(v) for key, v in _choices.items()}


def measured_choice(a: torch.Tensor, vectors: bool) -> str:
    """``"device"`` or ``"cpu"``: the faster for matrices like ``a``, measured on the first call
    for its (device, size, dtype, vectors-or-not) and remembered for the process."""
    key = (str(a.device), a.shape[-1], str(a.dtype).replace("torch.", ""), "eigh" if vectors else "eigvalsh")
    if key not in _choices:
        _choices[key] = probe_placement(a, vectors)
        logger.info("spectral eigen-solver for %s: %s (device %.1f ms, cpu %.1f ms for %d matrices)",
                    "/".join(map(str, key)), _choices[key]["choice"], _choices[key]["device_ms"],
                    _choices[key]["cpu_ms"], a.numel() // (a.shape[-1] ** 2))
    return _choices[key]["choice"]


def symmetric_eigh(a: torch.Tensor, vectors: bool = True, placement: str = "auto"):
    """``torch.linalg.eigh(a)`` (``vectors``) or ``torch.linalg.eigvalsh(a)``, run where
    ``placement`` says (see the module docstring). Eigenvalues ascending, as torch returns them."""
    if placement not in PLACEMENTS:
        raise ValueError(f"eigh placement must be one of {PLACEMENTS}, got {placement!r}")
    if placement == "auto":
        if a.numel() == 0:
            placement = "device"
        elif a.device.type == "cpu":
            placement = "cpu"
        else:
            placement = measured_choice(a, vectors)
    if placement == "cpu":
        return eigh_on_host(a, vectors)
    return _solve(a, vectors)
