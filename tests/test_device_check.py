"""The GPU check (benchmarks/device_check.sh) must not fail on a lent GPU for a reason a CPU could
have shown: its CPU path runs the same steps (wheels installed into a temp dir as on the device,
FiftyOne and MongoDB hidden, bench.py per method, the summary) with tiny random models. Also:
the summary copes with a run cut short, and the reference flow's stage clocks are read only
after a device synchronisation (else CUDA stage times lie)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import device_report  # noqa: E402


def _wheel_dir(shared_dir: Path) -> Path:
    """The carried copy (.whl) if there is one, else ../shared/device-wheels (fails if neither)."""
    carried = ROOT / ".whl"
    if list(carried.glob("*.whl")):
        return carried
    wheels = shared_dir / "device-wheels"
    assert list(wheels.glob("*.whl")), f"no wheels in {wheels}: the device check installs them"
    return wheels


def _script_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    env["PYTHON"] = sys.executable  # python3 on the device; here the project's interpreter
    return env


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_cpu_quick_path_writes_the_figures_and_targets(tmp_path, shared_dir):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--quick", "--methods", "cass",
         "--wheels", str(_wheel_dir(shared_dir)), "--out", str(out)],
        cwd=tmp_path, env=_script_env(), capture_output=True, text=True, timeout=170,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for name in ("device_check.json", "device_check.log", "env.json", "stages.tsv", "bench_cass.json"):
        assert (out / name).is_file(), f"{name} missing; log:\n{log[-3000:]}"
    assert "GPU targets (issue 15)" in (out / "device_check.log").read_text()

    report = json.loads((out / "device_check.json").read_text())  # strict JSON: no NaN
    assert {"env", "stages", "runs", "checks", "targets", "eigh_probe_ms", "eigh_placement_auto",
            "gpu_memory_batch16_mb", "complete", "skipped"} <= set(report)
    assert report["complete"] is True and report["skipped"] == []
    assert [s["stage"] for s in report["stages"]] == ["install", "env", "bench_cass"]
    assert all(s["status"] == "0" for s in report["stages"])

    # the environment as on the device: the carried wheels first, FiftyOne / MongoDB not needed
    env = report["env"]
    assert env["from_wheels"] == {"timm": True, "open_clip": True, "ftfy": True, "wcwidth": True}
    assert env["modules"]["fiftyone"]["importable"] is False
    assert env["modules"]["pymongo"]["importable"] is False
    assert env["modules"]["fiftyone_cass"]["path"] == str(ROOT / "fiftyone_cass")

    runs = {(r["mode"], r["precision"]): r for r in report["runs"]}
    assert set(runs) == {("engine", "fp16"), ("engine", "fp32"), ("reference", "fp16"), ("reference", "fp32")}
    for r in runs.values():
        assert r["method"] == "cass" and r["batch"] == 1
        assert _finite(r["images_per_s"]) and r["images_per_s"] > 0
        assert all(_finite(v) and v >= 0 for v in r["stage_ms"].values())
        assert {"clip", "dino", "spectral", "stitch"} <= set(r["stage_ms"])
        assert r["gpu_peak_mb"] is None  # CPU run

    assert set(report["eigh_probe_ms"]) == {"cpu_float32", "cpu_pool_float32", "cpu_float64", "cpu_pool_float64"}
    assert all(_finite(v) and v > 0 for v in report["eigh_probe_ms"].values())

    agree = report["checks"]["agreement_cass_fp16"]
    assert 0.9 < agree <= 1.0
    assert report["checks"]["reference_agreement_cass_fp32"] > 0.99  # same math, other control flow

    targets = {t["target"]: t for t in report["targets"]}
    assert set(targets) == {"cass fp16 images/s", "cass fp16 vs reference flow", "cass fp16 agreement with fp32"}
    speed = targets["cass fp16 images/s"]
    assert speed["measured"] == pytest.approx(runs[("engine", "fp16")]["images_per_s"])
    assert speed["threshold"] == 150 and speed["met"] is False  # a CPU does not reach the GPU target
    ratio = targets["cass fp16 vs reference flow"]
    assert ratio["measured"] == pytest.approx(runs[("engine", "fp16")]["images_per_s"]
                                              / runs[("reference", "fp16")]["images_per_s"])
    assert ratio["met"] is (ratio["measured"] >= 30)
    assert targets["cass fp16 agreement with fp32"]["measured"] == pytest.approx(agree)
    assert targets["cass fp16 agreement with fp32"]["met"] is (agree >= 0.99)


def test_usage_errors_and_missing_wheels_fail_fast(tmp_path):
    bad = subprocess.run(["bash", str(SCRIPT), "--device", "gpu"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--device must be cuda or cpu" in bad.stderr
    empty = tmp_path / "nowheels"
    empty.mkdir()
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", "--wheels", str(empty),
                           "--out", str(tmp_path / "o")], env=_script_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "no wheels in" in proc.stdout and "cp ../shared/device-wheels/*.whl .whl/" in proc.stdout
    assert "no wheels in" in (tmp_path / "o" / "device_check.log").read_text()


def _row(mode, method, precision, batch, ips, gpu_mb=None):
    return {"mode": mode, "method": method, "precision": precision, "batch": batch, "images_per_s": ips,
            "cpu_s_per_image": 1.0, "stage_ms": {"clip": 1.0}, "rss_peak_mb": 1.0, "rss_peak_exact": True,
            "gpu_peak_mb": gpu_mb}


def test_targets_of_a_partial_run():
    rows = [_row("engine", "cass", "fp16", 16, 180.0), _row("engine", "cass", "fp16", 1, 40.0),
            _row("reference", "cass", "fp16", 1, 5.0), _row("engine", "cass+cdam", "fp16", 16, 90.0)]
    t = {x["target"]: x for x in bench.gpu_targets(rows, {"agreement_cass_fp16": 0.995})}
    assert t["cass fp16 images/s"]["measured"] == 180.0 and t["cass fp16 images/s"]["met"] is True
    assert "batch 16" in t["cass fp16 images/s"]["detail"]
    assert t["cass+cdam fp16 images/s"]["met"] is False
    assert t["cass fp16 vs reference flow"]["measured"] == pytest.approx(36.0)
    assert t["cass fp16 vs reference flow"]["met"] is True
    # not measured is neither met nor NOT met
    assert t["cass+cdam fp16 vs reference flow"]["measured"] is None
    assert t["cass+cdam fp16 vs reference flow"]["met"] is None
    assert t["cass fp16 agreement with fp32"]["met"] is True
    assert t["cass+cdam fp16 agreement with fp32"]["met"] is None


def test_summary_of_a_run_cut_short(tmp_path, capsys):
    """A bench stage killed by its timeout leaves its last rewrite (complete: false); the summary
    still merges it, writes strict JSON (NaN -> null) and says the run is incomplete."""
    part = {"complete": False, "args": {"methods": ["cass"]}, "checks": {}, "skipped": [],
            "eigh_probe_ms": {"cuda_default_float32": 12.5, "cuda_magma_float32": float("nan")},
            "eigh_placement_auto": {"cuda:0/64/float64/eigh": {"choice": "cpu", "device_ms": 80.0, "cpu_ms": 9.0}},
            "runs": [_row("engine", "cass", "fp16", 16, 120.0, gpu_mb=5000.0)]}
    bench.write_json(str(tmp_path / "bench_cass.json"), part)
    (tmp_path / "stages.tsv").write_text("install\t0\t1.0\t120\nbench_cass\ttimeout\t150.2\t150\n")
    assert device_report.main(["summary", "--out", str(tmp_path), "--device", "cuda"]) == 0
    printed = capsys.readouterr().out
    assert "cass fp16 images/s" in printed and "NOT met" in printed and "not measured" in printed
    assert "cuda:0/64/float64/eigh: cpu" in printed
    text = (tmp_path / "device_check.json").read_text()
    assert "NaN" not in text
    report = json.loads(text)
    assert report["complete"] is False
    assert report["eigh_probe_ms"]["cuda_magma_float32"] is None
    assert report["gpu_memory_batch16_mb"] == {"cass fp16": 5000.0}
    assert report["stages"][1] == {"stage": "bench_cass", "status": "timeout", "seconds": 150.2, "limit_s": 150.0}
    t = {x["target"]: x for x in report["targets"]}
    assert t["cass fp16 images/s"]["met"] is False and t["cass fp16 vs reference flow"]["met"] is None


def test_reference_flow_reads_its_clocks_after_a_device_sync(monkeypatch):
    """On CUDA, work is queued: a stage's host clock read is only true after a synchronisation.
    Every clock read of the reference flow's stage accounting must directly follow one."""
    import numpy as np
    import open_clip
    import reference_flow

    from fiftyone_cass.models.backbones import get_backbone_spec, load_clip, load_dino
    from fiftyone_cass.models.presets import cdam_aug_words
    from fiftyone_cass.models.segmenter import Segmenter

    spec = get_backbone_spec("tiny")
    clip, dino = load_clip(spec), load_dino(spec)
    tok = open_clip.get_tokenizer("ViT-B-16")
    classes = ["dog", "cat", "car", "tree"]
    bench.install_random_text(clip, tok, "cpu", classes + cdam_aug_words())
    seg = Segmenter(classes=classes, backbone="tiny", method="cass", device="cpu", short_side=224,
                    bg_rule="none", models=(clip, dino, tok))
    flow = reference_flow.ReferenceFlow(seg)
    events = []
    real = reference_flow.time.perf_counter
    monkeypatch.setattr(reference_flow, "time", types.SimpleNamespace(
        perf_counter=lambda: events.append("clock") or real()))
    flow._sync = lambda: events.append("sync")
    rgb = (np.random.default_rng(0).random((224, 300, 3)) * 255).astype(np.uint8)
    flow.segment(rgb)
    clocks = [i for i, e in enumerate(events) if e == "clock"]
    assert len(clocks) >= 10  # prepare, per-window stages, stitch
    assert all(i > 0 and events[i - 1] == "sync" for i in clocks), events


def test_backbone_records_stage_runs_each_record_offline_and_is_summarised(tmp_path, capsys):
    """benchmarks/backbone_records.py (the device check's records stage, issue 23) on the tiny
    records: each in its own offline process, figures in records.json, merged by the summary."""
    import backbone_records

    out = tmp_path / "records.json"
    rc = backbone_records.main(["--records", "tiny-l14-prior,tiny-dinov2,tiny-dinov3", "--size", "160x120",
                                "--images", "2", "--method", "cass", "--weights-dir", str(tmp_path / "w"),
                                "--json", str(out), "--timeout", "300"])
    assert rc == 0, capsys.readouterr().out[-3000:]
    rec = json.loads(out.read_text())
    assert rec["complete"] is True and [r["record"] for r in rec["records"]] == ["tiny-l14-prior", "tiny-dinov2", "tiny-dinov3"]
    for r in rec["records"]:
        assert len(r["s_per_image"]) == 2 and all(_finite(x) and x > 0 for x in r["s_per_image"])
        assert r["peak_rss_mb"] > 0 and {"clip", "dino", "spectral"} <= set(r["stages_ms_of_best"])
    assert rec["records"][0]["prior"] == "cass-tiny-clip-l14" and "clip_global" in rec["records"][0]["stages_ms_of_best"]
    assert rec["records"][2]["vfm"] == "vit_base_patch16_dinov3"
    (tmp_path / "stages.tsv").write_text("records\t0\t10.0\t150\n")
    capsys.readouterr()
    assert device_report.main(["summary", "--out", str(tmp_path), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "backbone records" in printed and "tiny-dinov3" in printed
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["records"]["records"][1]["record"] == "tiny-dinov2"
