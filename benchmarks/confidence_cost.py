"""What the confidence outputs cost: labelling time and peak memory with and without them.

Two measurements, each printing its figures (and ``--json`` writes them):

* **time** on the full-size architectures with random weights (``--backbone random-base``: CLIP
  ViT-B/16 + DINO ViT-B/8; speed does not depend on weight values), a preset's vocabulary with
  fixed random text vectors (as ``bench.py``), synthetic images decoded once beforehand. The same
  images are segmented with the outputs off and on, interleaved (off, on, off, on, ...) so that a
  shared machine's drift hits both alike (the order turned each round). Time is the process's
  CPU time with one torch thread (``--threads 1``, the default: other work on a shared machine
  then slows the wall clock but hardly the CPU seconds), wall time beside it; the figures are the
  median over rounds of the time per image, the added share ``(on - off) / off`` of the medians
  and the paired one (median over rounds of each round's ``on / off - 1``). The 8-bit PNG write
  of a map (quantisation + encoding, what the outputs do) is timed too. Variants: ``confidence`` (per-image figures
  only, what labelling stores by default), ``+uncertainty`` (a per-pixel margin map as well) and
  ``+heatmap`` (one class probability map, what a concept heatmap needs).
* **memory** of one large image (``--big 4000x3000``, the ``coco_stuff`` preset's 171 names, the
  tiny backbone, default ``full_res_budget``): peak RSS above the RSS before the call (VmHWM reset
  through ``/proc/self/clear_refs``), without and with confidence + uncertainty map. The
  uncertainty map itself is a float32 H x W array (48 MB at 12 MP) that the result holds; the
  figure shows what else the bands add.

Usage::

    python benchmarks/confidence_cost.py [--images 4] [--rounds 3] [--size 640x480] [--preset coco_object]
                                         [--backbone random-base] [--big 4000x3000] [--no-big] [--threads 1]
                                         [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench  # noqa: E402  (benchmarks/bench.py: images, random text, peak memory)

VARIANTS = {
    "off": dict(return_confidence=False, uncertainty=None, probability_maps=()),
    "confidence": dict(return_confidence=True, uncertainty=None, probability_maps=()),
    "+uncertainty": dict(return_confidence=True, uncertainty="margin", probability_maps=()),
    "+heatmap": dict(return_confidence=True, uncertainty=None, probability_maps=(1,)),
}


def _set(seg, variant: str) -> None:
    for k, v in VARIANTS[variant].items():
        setattr(seg, k, v)


def _segmenter(preset: str, backbone: str, **kw):
    from fiftyone_cass.models.backbones import cached_models
    from fiftyone_cass.models.segmenter import Segmenter

    clip, dino, tokenizer = cached_models(backbone, device="cpu")
    # fixed random vectors instead of the random text tower, before the Segmenter embeds its names
    bench.install_random_text(clip, tokenizer, torch.device("cpu"), bench.vocabulary_names(preset))
    return Segmenter(preset=preset, method="cass", backbone=backbone, device="cpu", **kw)


def time_variants(args) -> dict:
    import cv2

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = bench.make_images([(w, h)], args.images, tmp)
        arrays = [cv2.imread(p)[:, :, ::-1].copy() for p in paths]
    seg = _segmenter(args.preset, args.backbone, batch_size=args.images)
    seg.segment_arrays(arrays[:1])  # warm-up
    cpu = {v: [] for v in VARIANTS}  # process CPU seconds per image (all threads of this process)
    wall = {v: [] for v in VARIANTS}
    write = {"uncertainty_png": [], "heatmap_png": []}  # writing the 8-bit PNG of a map, per image
    order = list(VARIANTS)
    for r in range(args.rounds):
        # interleaved, and the order turned each round (A B C D, B C D A, ...): drift hits all alike
        for v in order[r % len(order):] + order[:r % len(order)]:
            _set(seg, v)
            c0, t0 = time.process_time(), time.perf_counter()
            out = seg.segment_arrays(arrays)
            cpu[v].append((time.process_time() - c0) / len(arrays))
            wall[v].append((time.perf_counter() - t0) / len(arrays))
            if v != "off":
                assert out[0].confidence is not None
            if v in ("+uncertainty", "+heatmap"):
                maps = [o.uncertainty if v == "+uncertainty" else o.probabilities[1] for o in out]
                write["uncertainty_png" if v == "+uncertainty" else "heatmap_png"].append(_png_seconds(maps))
    med = {v: statistics.median(ts) for v, ts in cpu.items()}
    med_wall = {v: statistics.median(ts) for v, ts in wall.items()}
    return {
        "size": args.size, "images": args.images, "rounds": args.rounds, "preset": args.preset,
        "backbone": args.backbone, "queries": len(seg.queries), "torch_threads": torch.get_num_threads(),
        "cpu_s_per_image": med, "wall_s_per_image": med_wall, "all_cpu_s_per_image": cpu,
        "all_wall_s_per_image": wall,
        "png_write_s_per_image": {k: statistics.median(v) for k, v in write.items() if v},
        "added_share": {v: med[v] / med["off"] - 1.0 for v in VARIANTS if v != "off"},
        "added_share_wall": {v: med_wall[v] / med_wall["off"] - 1.0 for v in VARIANTS if v != "off"},
        # per round the variant against the round's "off" run, median over rounds (paired: a round's
        # drift cancels)
        "added_share_paired": {v: statistics.median(c / o - 1.0 for c, o in zip(cpu[v], cpu["off"]))
                               for v in VARIANTS if v != "off"},
    }


def _png_seconds(maps) -> float:
    """CPU seconds per map to quantise it to 8 bits and write it as a PNG (what the outputs do)."""
    from fiftyone_cass.fileio import write_mask_png

    with tempfile.TemporaryDirectory() as tmp:
        c0 = time.process_time()
        for k, m in enumerate(maps):
            q = np.rint(np.clip(np.nan_to_num(m, nan=1.0), 0.0, 1.0) * 255.0).astype(np.uint8)
            write_mask_png(os.path.join(tmp, f"{k}.png"), q)
        return (time.process_time() - c0) / len(maps)


def big_image_memory(args) -> dict:
    w, h = (int(v) for v in args.big.split("x"))
    seg = _segmenter("coco_stuff", "tiny")
    rng = np.random.default_rng(0)
    img = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    seg.segment_arrays([img[:200, :300]])  # warm-up
    out = {}
    for v in ("off", "+uncertainty", "off", "+uncertainty"):
        _set(seg, v)
        mem = bench.PeakMemory(torch.device("cpu"))
        before = bench.current_rss_mb()
        mem.start()
        c0, t0 = time.process_time(), time.perf_counter()
        r = seg.segment_arrays([img])[0]
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = mem.peak()
        out[v] = {"rss_above_mb": peak["rss_peak_mb"] - before, "exact": peak["rss_peak_exact"], "seconds": took,
                  "cpu_seconds": cpu}
        del r
    out["size"] = args.big
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--preset", default="coco_object")
    ap.add_argument("--backbone", default="random-base")
    ap.add_argument("--big", default="4000x3000")
    ap.add_argument("--no-big", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: process CPU time is then a robust figure on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"load_average_start": os.getloadavg(),"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "torch_threads": torch.get_num_threads()}
    t = time_variants(args)
    report["time"] = t
    print(f"time per image, {t['size']}, {t['preset']} ({t['queries']} queries), {t['backbone']}, "
          f"{t['torch_threads']} torch thread(s), median of {t['rounds']} interleaved rounds x {t['images']} images "
          "(process CPU time; wall time beside it):")
    for v, s in t["cpu_s_per_image"].items():
        extra = "" if v == "off" else f"   {100 * t['added_share'][v]:+.1f}%"
        wextra = "" if v == "off" else f"   {100 * t['added_share_wall'][v]:+.1f}%"
        paired = "" if v == "off" else f"   paired {100 * t['added_share_paired'][v]:+.1f}%"
        print(f"  {v:<14} cpu {s:8.3f} s{extra:>9}   wall {t['wall_s_per_image'][v]:8.3f} s{wextra:>9}{paired}")
    for k, s in t["png_write_s_per_image"].items():
        print(f"  {k:<16} {s:8.3f} s per image (8-bit quantisation + PNG write)")
    report["load_average_after_time"] = os.getloadavg()
    print(f"load average: {report['load_average_start']} at start, {report['load_average_after_time']} after")
    if not args.no_big:
        m = big_image_memory(args)
        report["memory"] = m
        print(f"peak RSS above the call's start, one {m['size']} image, coco_stuff (171 names), tiny backbone:")
        for v in ("off", "+uncertainty"):
            print(f"  {v:<14} {m[v]['rss_above_mb']:8.0f} MB   cpu {m[v]['cpu_seconds']:.1f} s   wall {m[v]['seconds']:.1f} s"
                  + ("" if m[v]["exact"] else "  (upper bound: VmHWM could not be reset)"))
        report["load_average_end"] = os.getloadavg()
    if args.json:
        bench.write_json(args.json, report)  # atomic, as bench.py's
    return 0


if __name__ == "__main__":
    sys.exit(main())
