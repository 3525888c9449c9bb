"""Speed and peak memory of each backbone record (issue 23) with random full-size weights, loaded
the way an offline machine loads the real ones.

1. Every component of the records asked for (CLIP ViT-B/16, CLIP ViT-L/14 prior, DINO ViT-B/8,
   DINOv2 ViT-B/14 reg4, DINOv3 ViT-B/16) is built with random weights through the production
   loaders (``load_clip`` / ``load_dino`` / ``load_prior(random_weights=True)``) and saved under the
   record's offline file name in one weights directory (kept between runs with ``--weights-dir``).
2. Each record then runs in a fresh subprocess with ``HF_HUB_OFFLINE=1`` and
   ``FIFTYONE_CASS_WEIGHTS_DIR`` pointing there: the record's models are loaded from those files
   (the offline path; no hub, no explicit checkpoint argument), then ``Segmenter(preset=...,
   backbone=NAME)`` labels the images (COCO-Object protocol by default: 113 names + CDAM's 80
   words, 512x384 -> 448x336, 6 windows). As in bench.py, fixed random unit text vectors stand in
   for the random text towers (of the CLIP and of the prior). Reported per record: load time,
   seconds per image (wall and process CPU time; best of the images after the first), the stages
   (ms per image), and the process's peak RSS (and ``torch.cuda.max_memory_allocated`` on a GPU).

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/backbone_records.py                   # all four, one 512x384 image
    python benchmarks/backbone_records.py --records openai,openai-dinov2 --images 2 --json out.json
    python benchmarks/backbone_records.py --device cuda --images 4           # benchmarks/device_check.sh

Options: --records a,b  --size 512x384  --images N  --method cass+cdam  --preset coco_object  --device cpu|cuda
--weights-dir DIR (default: a temporary directory, deleted)  --json out.json  --timeout S (per record)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench.py: see RESULTS.md
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

PUBLISHED = ("openai", "openai-l14-prior", "openai-dinov2", "openai-dinov3")


def prepare_weights(records, folder: str) -> dict:
    """Random full-size weights of every component, saved under the records' offline file names.
    Returns ``{file: seconds to build and save}`` (files already there are kept)."""
    import torch
    from safetensors.torch import save_file

    from fiftyone_cass.models.backbones import BACKBONES, load_clip, load_dino, load_prior

    made = {}
    for name in records:
        spec = BACKBONES[name]
        for what, w in spec.components():
            if not w.file:  # a test record: random weights, no file
                continue
            path = os.path.join(folder, w.file)
            if os.path.exists(path):
                continue
            t = time.perf_counter()
            loader = {"CLIP": load_clip, "DINO": load_dino, "PRIOR": load_prior}[what]
            model = loader(spec, None, "cpu", random_weights=True)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if path.endswith(".safetensors"):
                save_file(state, path)
            else:
                torch.save(state, path)
            made[w.file] = round(time.perf_counter() - t, 1)
            del model, state
    return made


def child(name: str, args) -> dict:
    """One record in this (fresh) process: load offline, embed, label; figures as a dict."""
    import numpy as np
    import torch

    from fiftyone_cass import Segmenter
    from fiftyone_cass.images import load_rgb
    from fiftyone_cass.models.backbones import cached_models, cached_prior
    from fiftyone_cass.models.profiling import StageTimer
    from bench import install_random_text, make_images, vocabulary_names

    device = torch.device(args.device)
    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        images = [load_rgb(p) for p in make_images([(w, h)], args.images, tmp)]
    t0 = time.perf_counter()
    # the offline path: every file from FIFTYONE_CASS_WEIGHTS_DIR (cached for the Segmenter below)
    clip, _, tok = cached_models(name, device=device)
    prior = cached_prior(name, device)
    load_s = time.perf_counter() - t0
    # random unit text vectors instead of the random text towers, as bench.py (the text is
    # embedded once per vocabulary, outside the per-image cost): for the CLIP and the prior
    names = vocabulary_names(args.preset)
    install_random_text(clip, tok, device, names)
    if prior is not None:
        install_random_text(prior[0], prior[1], device, names)
    seg = Segmenter(preset=args.preset, backbone=name, method=args.method, device=str(device))
    seg.profiler = StageTimer(device)
    per_image, cpu_per_image, stages = [], [], []
    for img in images:
        seg.profiler.reset()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t, c = time.perf_counter(), time.process_time()
        (res,) = seg.segment_arrays([img])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_image.append(time.perf_counter() - t)
        cpu_per_image.append(time.process_time() - c)
        stages.append({k: round(1000 * v) for k, v in seg.profiler.summary().items()})
        assert res.label_map.shape == (h, w)
    steady = per_image[1:] or per_image
    best = min(range(len(steady)), key=steady.__getitem__) + (1 if len(per_image) > 1 else 0)
    out = {
        "record": name,
        "vfm": seg.record.vfm.timm_name,
        "prior": None if seg.record.prior is None else seg.record.prior.model,
        "load_s": round(load_s, 1),
        "s_per_image": [round(x, 2) for x in per_image],
        "best_s_per_image": round(min(steady), 2),
        "cpu_s_per_image": [round(x, 2) for x in cpu_per_image],  # process CPU time, all threads
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "stages_ms_of_best": stages[best],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "labels_in_map": int(len(np.unique(res.label_map))),
    }
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", default=",".join(PUBLISHED))
    ap.add_argument("--size", default="512x384")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--method", default="cass+cdam")
    ap.add_argument("--preset", default="coco_object")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return 0

    import torch
    from bench import machine_info

    records = [r.strip() for r in args.records.split(",") if r.strip()]
    folder = args.weights_dir or tempfile.mkdtemp(prefix="cass-records-")
    os.makedirs(folder, exist_ok=True)
    report = {"machine": machine_info(torch.device(args.device)), "size": args.size, "images": args.images,
              "method": args.method, "preset": args.preset, "records": [], "complete": False}
    try:
        t = time.perf_counter()
        report["weights_built_s"] = prepare_weights(records, folder)
        print(f"random full-size weights in {folder}: {time.perf_counter() - t:.0f} s", flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", FIFTYONE_CASS_WEIGHTS_DIR=folder, FIFTYONE_CASS_TEXT_CACHE="0")
        for var in ("FIFTYONE_CASS_CLIP_CHECKPOINT", "FIFTYONE_CASS_DINO_CHECKPOINT", "FIFTYONE_CASS_PRIOR_CHECKPOINT"):
            env.pop(var, None)
        for name in records:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--size", args.size,
                   "--images", str(args.images), "--method", args.method, "--preset", args.preset,
                   "--device", args.device]
            try:
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                row = json.loads(lines[-1][7:]) if lines else {"record": name, "error": p.stderr[-2000:]}
            except subprocess.TimeoutExpired:
                row = {"record": name, "error": f"timed out after {args.timeout:.0f} s"}
            report["records"].append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json + ".tmp", "w") as f:
                    json.dump(report, f, indent=2)
                os.replace(args.json + ".tmp", args.json)
        report["complete"] = True
    finally:
        if not args.weights_dir:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
    print("| record | VFM | prior | load s | s/img | CPU s/img | peak RSS MB | stages ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["records"]:
        if "error" in r:
            print(f"| {r['record']} | error: {r['error'][-200:]} |")
            continue
        st = ", ".join(f"{k} {v}" for k, v in r["stages_ms_of_best"].items())
        print(f"| {r['record']} | {r['vfm']} | {r['prior'] or '-'} | {r['load_s']} | "
              f"{r['best_s_per_image']} | {min(r['cpu_s_per_image'])} | {r['peak_rss_mb']} | {st} |")
    return 0 if all("error" not in r for r in report["records"]) else 1


if __name__ == "__main__":
    sys.exit(main())
