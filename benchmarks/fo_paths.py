"""Images/s of the three ways to label a FiftyOne dataset, on the same images and settings:

* ``segmenter``: the bare engine, ``Segmenter(paths)`` (its own decode-ahead thread), no database;
* ``apply``: ``fiftyone_cass.apply`` (the operator's and the CLI's path): decode-ahead thread,
  masks + presence scores + tags + image embeddings saved in a writer thread, resumable;
* ``apply_model``: ``dataset.apply_model(CassModel(...))``, FiftyOne's own loop, images decoded
  by DataLoader workers (``--num-workers``), labels saved by FiftyOne, then presence + tags.

Each path runs once untimed on a few images first (models loaded, text embedded), then is timed
on ``--images`` images. The FiftyOne database is a private ``mongod``. Prints one line per path
with images/s and the ratio to the bare engine, and writes ``--json``.

    python benchmarks/fo_paths.py --backbone tiny --images 64
    python benchmarks/fo_paths.py --backbone random-base --images 64 --method cass --size 298x224
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench  # noqa: E402  (make_images, start_private_mongod, install_random_text)

CLASSES = ["person", "dog", "cat", "car", "tree", "road", "sky", "building"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="tiny", help="tiny | random-base (full-size, random weights)")
    ap.add_argument("--method", default="cass+cdam")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="640x480", help="WxH of the synthetic JPEG images")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-workers", type=int, default=1, help="DataLoader workers of apply_model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--short-side", type=int, default=None, help="protocol short side (default: the engine's 336)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per path (interleaved); the best counts")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="cass_fopaths_")
    bench.start_private_mongod(folder)
    import fiftyone as fo
    import torch

    from fiftyone_cass import CassModel, Segmenter
    from fiftyone_cass.fo.apply import apply
    from fiftyone_cass.models.backbones import cached_models
    from fiftyone_cass.models.presets import cdam_aug_words

    w, h = (int(x) for x in args.size.lower().split("x"))
    paths = bench.make_images([(w, h)], args.images, folder)
    warm = paths[: min(4, len(paths))]
    opts = dict(backbone=args.backbone, device=args.device, method=args.method)
    if args.short_side:
        opts["short_side"] = args.short_side
    if args.backbone != "tiny":  # the random text tower is slow on CPU and gives degenerate text
        clip, _, tok = cached_models(args.backbone, device=torch.device(args.device))
        bench.install_random_text(clip, tok, torch.device(args.device), CLASSES + cdam_aug_words())

    made = []

    def dataset(tag):
        made.append(tag)
        ds = fo.Dataset(f"fopaths-{tag}-{os.getpid()}-{len(made)}")
        ds.add_samples([fo.Sample(filepath=p) for p in paths])
        return ds

    seg = Segmenter(classes=CLASSES, batch_size=args.batch_size, **opts)
    model = CassModel(CLASSES, batch_size=args.batch_size, **opts)

    def run_segmenter(images):
        seg(images)

    def run_apply(ds):
        summary = apply(ds, CLASSES, masks="database", batch_size=args.batch_size, **opts)
        assert summary.num_labeled == len(ds), summary

    def run_apply_model(ds):
        ds.apply_model(model, "cass", batch_size=args.batch_size, num_workers=args.num_workers)
        assert len(ds.exists("cass")) == len(ds) and len(ds.exists("cass_presence")) == len(ds)

    def target(name, images):
        """The timed call's input, made before the clock starts (a fresh dataset for the FiftyOne
        paths: creating it and adding the samples is not labelling)."""
        if name == "segmenter":
            return images
        ds = dataset(name)
        return ds.select(ds.values("id")[: len(images)])

    runs = {"segmenter": run_segmenter, "apply": run_apply, "apply_model": run_apply_model}
    for name, fn in runs.items():  # warm-up: models loaded, text embedded, worker start-up code imported
        fn(target(name, warm))
    times = {name: [] for name in runs}
    for r in range(args.repeats):  # interleaved, so that a noisy minute hits every path alike
        for name, fn in runs.items():
            arg = target(name, paths)
            t0 = time.perf_counter()
            fn(arg)
            times[name].append(time.perf_counter() - t0)
    results = {name: min(ts) for name, ts in times.items()}

    out = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "fiftyone": fo.__version__, "date": time.strftime("%Y-%m-%d"),
        "settings": dict(vars(args)), "classes": len(CLASSES), "paths": {},
    }
    base = len(paths) / results["segmenter"]
    for name, secs in results.items():
        ips = len(paths) / secs
        out["paths"][name] = {"seconds": round(secs, 2), "all_seconds": [round(t, 2) for t in times[name]],
                              "images_per_s": round(ips, 3), "vs_segmenter": round(ips / base, 3)}
        print(f"{name:12s} {secs:8.1f} s  {ips:7.2f} images/s  {100 * ips / base:6.1f}% of the bare engine")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
