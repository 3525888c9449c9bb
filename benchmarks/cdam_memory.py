"""Peak extra memory and time of CDAM's pairwise JS divergence (SPEC G.3) at CDAM's own grid.

N = 784 patches (28x28), K = 250 channels, fp32. Compares the naive form of G.3 (materialises
several N x N x K tensors, ~615 MB each) with ``fiftyone_cass.core.cdam.js_divergence``
(row-chunked under a memory budget). Also times the full ``multiscale_cdam``.

Memory is measured honestly per variant in a fresh subprocess:
  * CUDA (if available, or ``--device cuda``): ``torch.cuda.max_memory_allocated`` minus the
    allocation before the call;
  * CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before the call when
    the kernel allows it, else ``ru_maxrss``, which makes the figure an upper bound) minus the
    RSS just before the call.
The figure includes the (N, N) result itself (2.4 MB in fp32).

Usage::

    python benchmarks/cdam_memory.py [--device cpu|cuda] [--n-side 28] [--k 250]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GIB = 2**30
MIB = 2**20


def naive_js(P, eps=1e-8):
    """SPEC G.3 written literally, materialising (B, N, N, K): the naive baseline of this benchmark
    and the oracle of tests/test_cdam_core.py."""
    import torch

    pi = P[..., :, None, :]
    pj = P[..., None, :, :]
    m = (pi + pj) / 2
    kl_i = (pi * (torch.log(pi + eps) - torch.log(m + eps))).sum(-1)
    kl_j = (pj * (torch.log(pj + eps) - torch.log(m + eps))).sum(-1)
    return 0.5 * (kl_i + kl_j)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(variant: str, device: str, n_side: int, k: int, repeats: int) -> dict:
    import torch

    from fiftyone_cass.core.cdam import class_distribution, js_divergence, multiscale_cdam

    torch.manual_seed(0)
    sim = (torch.rand(k, n_side, n_side) * 0.5 - 0.1).to(device)
    P = class_distribution(sim)
    fns = {
        "naive": lambda: naive_js(P),
        "chunked": lambda: js_divergence(P),
        "chunked_one_block": lambda: js_divergence(P, chunk_size=P.shape[0]),
        "multiscale_cdam": lambda: multiscale_cdam(sim),
    }
    fn = fns[variant]
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        reset_ok = True
    else:
        reset_ok = _reset_peak()
        # Without the reset, ru_maxrss also holds the import peak: the figure is an upper bound.
        before = _rss_bytes()
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_bytes(reset_ok)
    extra = peak - before
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {
        "variant": variant,
        "device": device,
        "extra_bytes": int(extra),
        "time_s": min(times),
        "out_shape": list(out.shape),
        "peak_method": "cuda.max_memory_allocated" if cuda else ("VmHWM" if reset_ok else "ru_maxrss, upper bound"),
    }


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--n-side", type=int, default=28)
    ap.add_argument("--k", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.device, args.n_side, args.k, args.repeats)))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    n = args.n_side**2
    block = n * n * args.k * 4  # one fp32 (N, N, K) tensor
    print(f"JS divergence, N={n} ({args.n_side}x{args.n_side}), K={args.k}, fp32, device={device}")
    print(f"one naive (N, N, K) tensor: {block / MIB:.0f} MiB")

    variants = ["chunked", "chunked_one_block", "naive", "multiscale_cdam"]
    for v in variants:
        if v in ("naive", "chunked_one_block"):
            if device == "cpu":
                avail = _mem_available()
            else:
                avail = torch.cuda.mem_get_info()[0]
            need = (6 if v == "naive" else 3) * block
            if avail < need:
                print(f"{v:>18}: skipped, needs ~{need / GIB:.1f} GiB, {avail / GIB:.1f} GiB available")
                continue
        repeats = 1 if v == "naive" else args.repeats
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", v, "--device", device,
               "--n-side", str(args.n_side), "--k", str(args.k), "--repeats", str(repeats)]
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"{v:>18}: failed (rc={res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        extra = r["extra_bytes"]
        verdict = "< 1 GiB" if extra < GIB else ">= 1 GiB"
        print(f"{v:>18}: peak extra {extra / MIB:8.1f} MiB ({verdict}, {r['peak_method']}), "
              f"time {r['time_s']:.3f} s (best of {repeats})")


if __name__ == "__main__":
    main()
