"""Cost of the refinements (issue 20 item 5): seconds and peak memory of PAMR in the Segmenter at
640x480 and 4000x3000 with the ``coco_object`` and ``coco_stuff`` vocabularies (tiny random
backbone, CPU), and of region voting with 50 and 200 regions.

PAMR: each configuration runs in a fresh subprocess: models loaded, one small image segmented
(warm-up), the peak RSS reset (``/proc/self/clear_refs``), then one image segmented with
``pamr_steps=0`` and once more with ``pamr_steps=10`` (dilations (8, 16)). Figures: the seconds of
each call and the peak RSS (VmHWM) above the RSS before the call. ``--real-chunks K``: only the
first K calls of :func:`fiftyone_cass.core.pamr.pamr_propagate` and of ``pamr_weights`` compute;
later calls return a zero tensor of the same shape (the same allocations, none of the arithmetic), so a 12-MP image
with 171 names can be measured for memory on a small machine; the seconds of the PAMR step are
then extrapolated from the computed calls (stated in the output) and the label map is not the
real one. ``--real-chunks 0`` (the default): everything computed.

Region voting: random elliptical regions (overlapping) on a random label map; majority vote
(``fiftyone_cass.core.regions.vote``), and the mean vote's per-region sums
(:class:`~fiftyone_cass.core.regions.RegionSums`) over bands of random class probabilities,
next to the previous region-by-region form of those sums (:func:`region_by_region_sums`; the
same labels, sums equal up to float rounding).

Usage::

    python benchmarks/refinement_cost.py --pamr 640x480:coco_object --votes 640x480,4000x3000
    python benchmarks/refinement_cost.py --pamr 4000x3000:coco_stuff --real-chunks 2 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

# OpenMP threads that spin while their sibling is descheduled make every small torch operation
# stall on a shared CPU (RESULTS.md, "Machine and date"): passive waiting, as bench.py, set
# before torch starts its thread pool (the PAMR subprocesses inherit it). Set it to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from cdam_memory import _mem_available, _peak_bytes, _reset_peak, _rss_bytes  # noqa: E402

MIB = 2**20


def pamr_worker(width: int, height: int, preset: str, real_chunks: int, threads: int = 0) -> dict:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)

    import fiftyone_cass.core.pamr as core_pamr
    from fiftyone_cass import Segmenter

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    import cv2

    small = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    calls = {"n": 0, "real": 0, "real_s": 0.0, "skipped": 0, "wn": 0, "wreal": 0, "wreal_s": 0.0, "wskipped": 0}
    real = core_pamr.pamr_propagate

    def propagate(mask, weights, steps, dilations, top_real=True, bottom_real=True):
        calls["n"] += 1
        if real_chunks and calls["real"] >= real_chunks:
            calls["skipped"] += 1
            reach = max(dilations)
            rows = mask.shape[-2] - (0 if top_real else steps * reach) - (0 if bottom_real else steps * reach)
            return torch.zeros((*mask.shape[:2], rows, mask.shape[-1]), dtype=mask.dtype)
        t = time.perf_counter()
        out = real(mask, weights, steps, dilations, top_real, bottom_real)
        calls["real"] += 1
        calls["real_s"] += time.perf_counter() - t
        return out

    real_w = core_pamr.pamr_weights

    def weights(guide, dilations, top_real=True, bottom_real=True):
        calls["wn"] += 1
        if real_chunks and calls["wreal"] >= real_chunks:
            calls["wskipped"] += 1
            reach = max(dilations)
            rows = guide.shape[-2] - (0 if top_real else reach) - (0 if bottom_real else reach)
            return torch.zeros((guide.shape[0], 8 * len(dilations), rows, guide.shape[-1]), dtype=guide.dtype)
        t = time.perf_counter()
        out = real_w(guide, dilations, top_real, bottom_real)
        calls["wreal"] += 1
        calls["wreal_s"] += time.perf_counter() - t
        return out

    core_pamr.pamr_propagate = propagate
    core_pamr.pamr_weights = weights
    out = {"size": f"{width}x{height}", "preset": preset, "real_chunks": real_chunks,
           "torch_threads": torch.get_num_threads()}
    for steps in (0, 10):
        seg = Segmenter(preset=preset, backbone="tiny", device="cpu", pamr_steps=steps)
        seg([small])  # warm-up
        reset_ok = _reset_peak()
        before = _rss_bytes()
        calls.update(n=0, real=0, real_s=0.0, skipped=0, wn=0, wreal=0, wreal_s=0.0, wskipped=0)
        t = time.perf_counter()
        seg([img])
        seconds = time.perf_counter() - t
        peak = _peak_bytes(reset_ok)
        r = {"seconds": seconds, "peak_extra_mib": (peak - before) / MIB, "rss_before_mib": before / MIB,
             "peak_rss_mib": peak / MIB, "peak_is_process_peak": not reset_ok,
             "queries": len(seg.queries), "budget": seg.options.full_res_budget}
        if steps:
            from fiftyone_cass.models.segmenter import pamr_band_plan

            o = seg.options
            r["band_rows"], r["channel_chunk"], need = pamr_band_plan(
                len(seg.queries), height, width, 4, o.full_res_budget, steps, tuple(o.pamr_dilations))
            r["band_estimate_mib"] = need / MIB
            r.update(propagate_calls=calls["n"], computed_calls=calls["real"], skipped_calls=calls["skipped"],
                     weight_calls=calls["wn"], computed_weight_calls=calls["wreal"])
            if calls["skipped"] or calls["wskipped"]:
                per = calls["real_s"] / max(calls["real"], 1)
                per_w = calls["wreal_s"] / max(calls["wreal"], 1)
                r["seconds_extrapolated"] = seconds + per * calls["skipped"] + per_w * calls["wskipped"]
        out[f"steps{steps}"] = r
    return out


def vote_figures(width: int, height: int, num_regions: int, num_labels: int = 172, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from fiftyone_cass.core.regions import Region, RegionSums, vote

    rng = np.random.default_rng(seed)
    lm = rng.integers(0, num_labels, (height, width)).astype(np.uint8)
    regions = []
    for _ in range(num_regions):  # ellipses from 1/40 to 1/4 of the image side
        h = int(rng.integers(max(2, height // 40), height // 4))
        w = int(rng.integers(max(2, width // 40), width // 4))
        y0, x0 = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        yy, xx = np.mgrid[0:h, 0:w]
        regions.append(Region(y0, x0, ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1))
    before = _rss_bytes()
    reset_ok = _reset_peak()
    t = time.perf_counter()
    out, n = vote(lm, regions, "majority")
    majority_s = time.perf_counter() - t
    majority_peak = (_peak_bytes(reset_ok) - before) / MIB
    band_rows = 64
    probs = torch.rand(num_labels, band_rows, width)  # one band's class probabilities, reused
    sums = RegionSums(regions, num_labels)
    t = time.perf_counter()
    for a in range(0, height, band_rows):
        b = min(a + band_rows, height)
        sums.add(probs[:, : b - a], (a, b))
    got = sums.sums
    sums_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = region_by_region_sums(regions, probs, height, band_rows)
    ref_s = time.perf_counter() - t
    t = time.perf_counter()
    fast = vote(lm, regions, "mean", class_sums=got)[0]
    mean_s = time.perf_counter() - t
    same = bool(np.array_equal(fast, vote(lm, regions, "mean", class_sums=ref)[0]))
    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-300))
    return {"size": f"{width}x{height}", "regions": num_regions, "painted": n, "majority_s": majority_s,
            "majority_peak_extra_mib": majority_peak, "mean_sums_s": sums_s, "mean_vote_s": mean_s,
            "labels": num_labels, "region_by_region_sums_s": ref_s, "same_labels_as_region_by_region": same,
            "max_rel_diff_of_sums": rel, "torch_threads": torch.get_num_threads()}


def region_by_region_sums(regions, probs, height: int, band_rows: int):
    """The form ``RegionSums`` had before 2026-12-06, for comparison: per band and region, the
    region's box of the band copied and multiplied by its mask (made again each time, float32),
    the product moved to numpy and added up in float64."""
    import numpy as np
    import torch

    out = np.zeros((len(regions), probs.shape[0]), np.float64)
    for a in range(0, height, band_rows):
        b = min(a + band_rows, height)
        for i, r in enumerate(regions):
            y0, y1, x0, x1 = r.box
            s, e = max(y0, a), min(y1, b)
            if s >= e or not r.mask[s - y0 : e - y0].any():
                continue
            part = probs[:, s - a : e - a, x0:x1]
            mt = torch.as_tensor(r.mask[s - y0 : e - y0]).to(part.dtype).reshape(-1)
            out[i] += (part.reshape(part.shape[0], -1) @ mt).to("cpu", torch.float64).numpy()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pamr", default="640x480:coco_object,640x480:coco_stuff",
                    help="WxH:preset,... ('' for none)")
    ap.add_argument("--real-chunks", type=int, default=0)
    ap.add_argument("--votes", default="640x480,4000x3000", help="WxH,... ('' for none)")
    ap.add_argument("--regions", default="50,200")
    ap.add_argument("--json", default=None)
    ap.add_argument("--timeout", type=float, default=3000, help="seconds per PAMR subprocess")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in the PAMR subprocesses (0: torch's default); on a CPU shared with other "
                         "work, 1 avoids the threads waiting on each other")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        size, preset = args.worker.split(":")
        w, h = (int(x) for x in size.split("x"))
        print(json.dumps(pamr_worker(w, h, preset, args.real_chunks, args.threads)))
        return 0
    import torch

    if args.threads:  # the votes run in this process
        torch.set_num_threads(args.threads)
    header = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "host": platform.node(),
              "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "mem_available_gib": _mem_available() / 2**30, "load": os.getloadavg(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    print(json.dumps(header))
    results = {"machine": header, "pamr": [], "votes": []}
    for spec in [s for s in args.pamr.split(",") if s]:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", spec, "--real-chunks", str(args.real_chunks),
               "--threads", str(args.threads)]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"PAMR {spec}: did not finish in {args.timeout:.0f} s")
            results["pamr"].append({"spec": spec, "error": f"timeout {args.timeout:.0f} s"})
            continue
        if res.returncode:
            print(f"PAMR {spec}: failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["load_after"] = os.getloadavg()
        results["pamr"].append(r)
        off, on = r["steps0"], r["steps10"]
        extra = f", extrapolated {on['seconds_extrapolated']:.1f} s ({on['computed_calls']} of {on['propagate_calls']} " \
                "propagation calls computed)" if "seconds_extrapolated" in on else ""
        print(f"PAMR {spec} ({on['queries']} queries, {r['torch_threads']} threads): off {off['seconds']:.1f} s, "
              f"+{off['peak_extra_mib']:.0f} MiB; 10 steps {on['seconds']:.1f} s{extra}, +{on['peak_extra_mib']:.0f} MiB "
              f"peak above {on['rss_before_mib']:.0f} MiB (models + image), peak RSS {on['peak_rss_mib']:.0f} MiB; "
              f"bands of {on['band_rows']} rows (estimated {on['band_estimate_mib']:.0f} MiB each)")
        if args.json:  # each case as soon as it is measured
            with open(args.json + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(args.json + ".tmp", args.json)
    for size in [s for s in args.votes.split(",") if s]:
        w, h = (int(x) for x in size.split("x"))
        for n in (int(x) for x in args.regions.split(",")):
            v = vote_figures(w, h, n)
            results["votes"].append(v)
            print(f"vote {size}, {n} regions ({v['torch_threads']} threads): majority {v['majority_s'] * 1000:.0f} ms "
                  f"(+{v['majority_peak_extra_mib']:.0f} MiB), mean: sums over bands {v['mean_sums_s'] * 1000:.0f} ms "
                  f"(region by region: {v['region_by_region_sums_s'] * 1000:.0f} ms; same labels: "
                  f"{v['same_labels_as_region_by_region']}, sums within {v['max_rel_diff_of_sums']:.1e}) "
                  f"+ vote {v['mean_vote_s'] * 1000:.0f} ms")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
