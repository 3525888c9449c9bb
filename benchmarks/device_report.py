"""The two Python steps of ``benchmarks/device_check.sh`` that are not ``bench.py`` runs.

``env``: what the machine and the Python environment are (GPU, driver, torch / CUDA / cuDNN,
timm, open_clip and where each was imported from, and whether FiftyOne or MongoDB's client is
importable: the device check must not need them) -> ``env.json``.

``summary``: merges ``env.json``, ``stages.tsv`` (each stage's exit status and seconds) and the
``bench_*.json`` files of the bench stages and ``records.json`` of the backbone-records stage (complete or cut short by their time limit) into
``device_check.json``, and prints the issue's targets next to the measured figures, the GPU
memory at batch 16 and what ``eigh_placement=auto`` chose. It works on whatever finished: a
figure that was not measured is ``null`` in the JSON and "not measured" in the table.

Usage::

    python benchmarks/device_report.py env --json OUT/env.json
    python benchmarks/device_report.py summary --out OUT [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))


def _module(name: str) -> Dict:
    try:
        m = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - the answer is the report
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
    path = getattr(m, "__file__", None) or ""
    return {"importable": True, "version": str(getattr(m, "__version__", "?")), "path": os.path.dirname(path)}


def environment() -> Dict:
    """Versions and origins of what the engine runs on; the GPU as torch and nvidia-smi see it."""
    env: Dict = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": f"{platform.python_version()} ({sys.executable})",
        "machine": f"{platform.machine()}, {os.cpu_count()} logical cores",
        "wheel_dir": os.environ.get("CASS_WHEEL_DIR", ""),
    }
    try:
        env["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    import torch

    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                      "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                      "count": torch.cuda.device_count()}
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                            "temperature.gpu,power.draw,utilization.gpu", "--format=csv"],
                           capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = (q.stdout or q.stderr).strip()
    else:
        env["nvidia_smi"] = None
    mods = {name: _module(name) for name in
            ("timm", "open_clip", "ftfy", "wcwidth", "regex", "numpy", "scipy", "cv2", "PIL", "skimage",
             "huggingface_hub", "safetensors", "fiftyone_cass", "fiftyone", "pymongo")}
    env["modules"] = mods
    wheel_dir = env["wheel_dir"]
    env["from_wheels"] = {n: bool(wheel_dir) and mods[n].get("path", "").startswith(wheel_dir)
                          for n in ("timm", "open_clip", "ftfy", "wcwidth")}
    env["needs_fiftyone"] = False  # the check ran with fiftyone/pymongo hidden (see device_check.sh)
    return env


def cmd_env(args) -> int:
    env = environment()
    print(f"python {env['python']}; {env['machine']}")
    print(f"torch {env['torch']}, CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}, cuda available: {env['cuda_available']}")
    if env.get("gpu"):
        g = env["gpu"]
        print(f"GPU: {g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}, "
              f"{g['multiprocessors']} SMs, {g['count']} device(s)")
    print(f"nvidia-smi: {env['nvidia_smi'] or 'not found (no NVIDIA driver on this machine)'}")
    for name, m in env["modules"].items():
        where = f"{m['version']} from {m['path']}" if m["importable"] else f"NOT importable ({m['error']})"
        print(f"  {name:<16} {where}")
    print(f"from the carried wheels: {env['from_wheels']}")
    with open(args.json, "w") as f:
        json.dump(env, f, indent=2, default=str)
    bad = [n for n in ("torch", "timm", "open_clip", "cv2", "scipy") if n in env["modules"] and not env["modules"][n]["importable"]]
    if bad:
        print(f"missing for the engine: {bad}")
        return 1
    return 0


# ------------------------------------------------------------------------------------ summary
def read_stages(path: str) -> List[Dict]:
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 4:
                name, status, seconds, limit = parts[:4]
                out.append({"stage": name, "status": status, "seconds": float(seconds), "limit_s": float(limit)})
    return out


def cmd_summary(args) -> int:
    sys.path.insert(0, HERE)
    import bench

    out_dir = args.out
    report: Dict = {"device_check": "benchmarks/device_check.sh", "device": args.device,
                    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    env_path = os.path.join(out_dir, "env.json")
    report["env"] = json.load(open(env_path)) if os.path.exists(env_path) else None
    report["stages"] = read_stages(os.path.join(out_dir, "stages.tsv"))
    rows: List[Dict] = []
    checks: Dict[str, float] = {}
    report["bench"] = {}
    report["eigh_probe_ms"] = None
    report["eigh_placement_auto"] = {}
    report["skipped"] = []
    methods: List[str] = []
    for path in sorted(glob.glob(os.path.join(out_dir, "bench_*.json"))):
        name = os.path.basename(path)
        try:
            with open(path) as f:
                b = json.load(f)
        except (OSError, ValueError) as exc:
            report["bench"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        report["bench"][name] = {"complete": b.get("complete", False), "machine": b.get("machine"),
                                 "args": b.get("args"), "seconds": b.get("seconds_so_far")}
        rows += b.get("runs", [])
        checks.update(b.get("checks", {}))
        report["skipped"] += b.get("skipped", [])
        report["eigh_placement_auto"].update(b.get("eigh_placement_auto") or {})
        if b.get("eigh_probe_ms"):
            report["eigh_probe_ms"] = b["eigh_probe_ms"]
        methods += [m for m in (b.get("args") or {}).get("methods", []) if m not in methods]
    report["runs"] = rows
    report["checks"] = checks
    report["gpu_memory_batch16_mb"] = {f"{r['method']} {r['precision']}": r.get("gpu_peak_mb")
                                       for r in rows if r["mode"] == "engine" and r["batch"] == 16}
    report["targets"] = bench.gpu_targets(rows, checks, [m for m in ("cass", "cass+cdam") if m in methods] or ("cass", "cass+cdam"))
    report["records"] = None  # benchmarks/backbone_records.py (issue 23), when the stage ran
    records_path = os.path.join(out_dir, "records.json")
    if os.path.exists(records_path):
        try:
            with open(records_path) as f:
                report["records"] = json.load(f)
        except (OSError, ValueError) as exc:
            report["records"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["complete"] = bool(report["bench"]) and all(v.get("complete") for v in report["bench"].values()) \
        and all(s["status"] == "0" for s in report["stages"]) and not report["skipped"] \
        and (report["records"] is None or bool(report["records"].get("complete")))

    print("\n# device check summary")
    if report["env"]:
        e = report["env"]
        gpu = e.get("gpu") or {}
        print(f"machine: {gpu.get('name', 'no GPU')}, torch {e.get('torch')} (CUDA {e.get('torch_cuda')}, cuDNN {e.get('cudnn')}), "
              f"timm {e['modules']['timm'].get('version')}, open_clip {e['modules']['open_clip'].get('version')}, "
              f"python {e.get('python')}")
    for s in report["stages"]:
        print(f"  stage {s['stage']:<16} {s['status']:<10} {s['seconds']:7.1f} s (limit {s['limit_s']:.0f} s)")
    if rows:
        bench.print_table(rows)
    for item in report["skipped"]:
        print(f"  skipped: {item}")
    if report["gpu_memory_batch16_mb"]:
        print("\nGPU max allocated at batch 16 (MB): " + ", ".join(
            f"{k} {bench.fmt(v, 0)}" for k, v in report["gpu_memory_batch16_mb"].items()))
    if report["eigh_probe_ms"]:
        print("eigh probe (ms, one batched call): " + ", ".join(
            f"{k} {bench.fmt(v)}" for k, v in report["eigh_probe_ms"].items()))
    if report["eigh_placement_auto"]:
        print("eigh_placement=auto chose: " + "; ".join(
            f"{k}: {v['choice']} (device {v['device_ms']:.1f} ms, cpu pool {v['cpu_ms']:.1f} ms)"
            for k, v in report["eigh_placement_auto"].items()))
    else:
        print("eigh_placement=auto: nothing timed (CPU tensors always use the host pool)")
    for k, v in checks.items():
        if "agreement" in k:
            print(f"  {k}: {100 * v:.3f}%")
    rec = report["records"]
    if rec is not None:
        print("\nbackbone records (random full-size weights read offline; s/image best after the first):")
        for r in rec.get("records", []) if isinstance(rec, dict) else []:
            if "error" in r:
                print(f"  {r['record']:<18} error: {r['error'][-300:]}")
                continue
            print(f"  {r['record']:<18} {r['best_s_per_image']:7.3f} s/img, load {r['load_s']} s, "
                  f"peak RSS {r['peak_rss_mb']} MB, CUDA max allocated {r.get('cuda_max_allocated_mb', '-')} MB; "
                  + ", ".join(f"{k} {v}" for k, v in r["stages_ms_of_best"].items()))
        if isinstance(rec, dict) and "error" in rec:
            print(f"  records.json unreadable: {rec['error']}")
    bench.print_targets(report["targets"], args.device)
    print(f"complete: {report['complete']}")
    path = os.path.join(out_dir, "device_check.json")
    bench.write_json(path, report)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="machine and library versions -> JSON")
    e.add_argument("--json", required=True)
    s = sub.add_parser("summary", help="merge the stage results -> device_check.json")
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    return cmd_env(args) if args.cmd == "env" else cmd_summary(args)


if __name__ == "__main__":
    sys.exit(main())
