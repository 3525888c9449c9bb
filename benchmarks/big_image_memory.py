"""Peak memory per image above the loaded models: one 4000x3000 image, the ``coco_stuff`` preset
(171 class names) on the tiny random-weight backbone.

The models barely matter here: what grows with the image is the full-resolution part of the
pipeline (Q x H x W logits up-sampled to the original size, top query, threshold, label map),
which ``full_res_budget`` bounds by computing it in row bands. Each variant runs in a fresh
subprocess:

* ``before``: the code of git revision ``--before-ref`` (default: none; e.g. the commit before
  the bands), extracted with ``git archive`` into a temporary directory;
* ``whole``: the current code with ``full_res_budget=None`` (the whole image at once);
* ``after``: the current code with its default ``full_res_budget``.

In the subprocess: models loaded, text embedded, the image in memory and one small image
segmented (warm-up); then the peak RSS is reset (``/proc/self/clear_refs``) and the image
segmented. Figure = peak RSS (VmHWM) minus the RSS just before that call. A variant that would
need more memory than the machine has available is stopped by an address-space limit (it fails
with an allocation error instead of waking the OOM killer) and reported as such. The label maps
of all variants that ran are compared.

Usage::

    python benchmarks/big_image_memory.py [--before-ref REV] [--size 4000x3000] [--variants before,whole,after]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from cdam_memory import _mem_available, _peak_bytes, _reset_peak, _rss_bytes  # noqa: E402

MIB = 2**20
GIB = 2**30


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(variant: str, width: int, height: int, out_npy: str) -> dict:
    import numpy as np
    import torch

    from fiftyone_cass import Segmenter

    torch.manual_seed(0)
    opts = {"full_res_budget": None} if variant == "whole" else {}
    seg = Segmenter(preset="coco_stuff", backbone="tiny", device="cpu", **opts)
    rng = np.random.default_rng(0)
    # smooth random colours (a 40x30 grid up-sampled), so that the label map has regions
    small = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    import cv2

    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    seg([cv2.resize(small, (400, 300))])  # warm-up: thread pools, lazy imports, allocator
    # fail an allocation instead of waking the OOM killer: the address space may grow by what
    # the machine has available now, less 1 GiB
    headroom = max(_mem_available() - GIB, GIB)
    limit = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    reset_ok = _reset_peak()
    before = _rss_bytes()
    t0 = time.perf_counter()
    try:
        label_map = seg([img])[0].label_map
    except (RuntimeError, MemoryError) as exc:  # an allocation over the limit
        return {"variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                "headroom_bytes": int(headroom)}
    seconds = time.perf_counter() - t0
    peak = _peak_bytes(reset_ok)
    np.save(out_npy, label_map)
    return {
        "variant": variant,
        "extra_bytes": int(peak - before),
        "models_and_image_rss_bytes": int(before),
        "seconds": seconds,
        "labels": int(len(np.unique(label_map))),
        "full_res_budget": getattr(seg.options, "full_res_budget", "n/a (option absent)"),
        "queries": len(seg.queries),
        "peak_method": "VmHWM" if reset_ok else "ru_maxrss, upper bound",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT")
    ap.add_argument("--before-ref", default=None, help="git revision whose code is 'before'")
    ap.add_argument("--variants", default="before,whole,after")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    if args.worker:
        print(json.dumps(worker(args.worker, width, height, args.out)))
        return

    import numpy as np

    variants = [v for v in args.variants.split(",") if v]
    if "before" in variants and not args.before_ref:
        variants.remove("before")
        print("(no --before-ref: skipping 'before')")
    print(f"{width}x{height} image, preset coco_stuff on the tiny backbone, CPU; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, {_mem_available() / GIB:.1f} GiB available")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            env = dict(os.environ)
            code_root = ROOT
            if v == "before":
                code_root = os.path.join(tmp, "before")
                os.makedirs(code_root)
                archive = subprocess.run(["git", "-C", ROOT, "archive", args.before_ref, "fiftyone_cass"],
                                         capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", code_root], input=archive, check=True)
            env["PYTHONPATH"] = code_root + os.pathsep + env.get("PYTHONPATH", "")
            out = os.path.join(tmp, f"{v}.npy")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", v, "--size", args.size, "--out", out]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(f"{v:>7}: failed (rc={res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["code"] = args.before_ref if v == "before" else "working tree"
            results.append(r)
            if "error" in r:
                print(f"{v:>7}: did not fit in {r['headroom_bytes'] / GIB:.1f} GiB: {r['error']}")
                continue
            r["npy"] = out
            print(f"{v:>7}: peak RSS above the loaded models {r['extra_bytes'] / MIB:8.0f} MiB "
                  f"({r['extra_bytes'] / GIB:.2f} GiB, {r['peak_method']}), {r['seconds']:.1f} s, "
                  f"{r['labels']} labels, full_res_budget={r['full_res_budget']}, "
                  f"models+image RSS {r['models_and_image_rss_bytes'] / MIB:.0f} MiB")
        ran = [r for r in results if "npy" in r]
        maps = {r["variant"]: np.load(r["npy"]) for r in ran}
        for r in ran:
            del r["npy"]
        if len(maps) > 1:
            names = list(maps)
            same = all(np.array_equal(maps[names[0]], maps[n]) for n in names[1:])
            print(f"label maps of {', '.join(names)}: {'identical' if same else 'DIFFERENT'}")
            for r in results:
                r["label_maps_identical"] = same
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
