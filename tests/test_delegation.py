"""Delegation as a default install gets it: the App offers "Schedule" once scheduling is enabled
(FiftyOne's allow_legacy_orchestrators, set by scripts/setup.sh's env file and `fiftyone-cass app`),
and a run scheduled the way the App does it is executed by a real `fiftyone delegated launch`."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fiftyone as fo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionRunState, execute_or_delegate_operator, resolve_execution_options
from fiftyone.operators.registry import OperatorRegistry

from _label_helpers import OPTS, add_samples, make_images
from fiftyone_cass.app.support import SCHEDULING_ENV, enable_scheduling

AUTO = "@fiftyone-cass/cass/auto_label"
SEG_OPTIONS = {k: v for k, v in OPTS.items() if k not in ("backbone", "device")}
REPO = Path(__file__).resolve().parents[1]


def _options(ds):
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params={})
    return asyncio.run(resolve_execution_options(OperatorRegistry(), AUTO, request)).to_dict()


def test_schedule_is_offered_only_with_scheduling_enabled(fo_dataset, tmp_path, monkeypatch):
    ds = add_samples(fo_dataset("sched"), make_images(tmp_path, 1))
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)
    # FiftyOne's default: delegation needs a registered (Enterprise) orchestrator -> "NOT AVAILABLE"
    assert _options(ds)["orchestrator_registration_enabled"] is True

    env = {}
    assert enable_scheduling(env) is True and env[SCHEDULING_ENV] == "true"
    assert fo.config.allow_legacy_orchestrators is True
    opts = _options(ds)
    assert opts["orchestrator_registration_enabled"] is False and opts["allow_delegated_execution"]
    # a user's explicit choice wins
    env = {SCHEDULING_ENV: "false"}
    assert enable_scheduling(env) is False and fo.config.allow_legacy_orchestrators is False


def test_setup_env_file_enables_scheduling():
    script = (REPO / "scripts" / "setup.sh").read_text()
    line = next(x for x in script.splitlines() if SCHEDULING_ENV in x and "echo" in x)
    # the line that setup.sh writes into .cache/env.sh, evaluated by bash: defaults to true, keeps a user's value
    written = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout
    for preset, expected in ((None, "true"), ("false", "false")):
        env = {k: v for k, v in os.environ.items() if k != SCHEDULING_ENV}
        if preset is not None:
            env[SCHEDULING_ENV] = preset
        out = subprocess.run(["bash", "-c", written + f'\necho "${SCHEDULING_ENV}"'], capture_output=True,
                             text=True, env=env, check=True).stdout.split()[-1]
        assert out == expected


def test_scheduled_run_is_executed_by_fiftyone_delegated_launch(fo_dataset, tmp_path):
    ds = add_samples(fo_dataset("launch"), make_images(tmp_path / "imgs", 3))
    # what the App sends when the user picks "Schedule" in the Execute menu
    params = dict(class_source="classes", classes="dog, cat", label_field="cass", backbone="tiny", device="cpu",
                  batch_size=2, masks="database", options=json.dumps(SEG_OPTIONS), target="DATASET")
    request = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params, request_delegation=True)
    queued = asyncio.run(execute_or_delegate_operator(AUTO, request))
    assert queued.delegated and queued.error is None
    doc = _launch_until_done(queued.result["id"], tmp_path / "launch.log")
    assert doc.result.result["num_labeled"] == 3
    ds.reload()
    assert len(ds.exists("cass")) == 3 and ds.mask_targets["cass"] == {0: "background", 1: "dog", 2: "cat"}


def test_a_scheduled_concept_heatmap_is_executed_by_fiftyone_delegated_launch(fo_dataset, tmp_path):
    from fiftyone_cass.fo.claims import field_claim

    ds = add_samples(fo_dataset("conceptlaunch"), make_images(tmp_path / "imgs", 3))
    view = ds.limit(2)
    params = dict(prompt="a red car", heatmap_field="car", label_field="", target="CURRENT_VIEW",
                  settings=dict(SEG_OPTIONS, backbone="tiny", device="cpu", batch_size=1, masks="database"))
    request = dict(dataset_name=ds.name, view=view._serialize(), params=params, request_delegation=True)
    queued = asyncio.run(execute_or_delegate_operator("@fiftyone-cass/cass/concept_heatmap", request))
    assert queued.delegated and queued.error is None
    doc = _launch_until_done(queued.result["id"], tmp_path / "launch.log")
    assert doc.result.result["num_computed"] == 2 and doc.result.result["num_failed"] == 0
    ds.reload()
    assert ds.count("car") == 2 and ds.last()["car"] is None  # the view's samples only
    assert field_claim(ds, "car") is None  # the launcher's run released its claim


def _launch_until_done(op_id, log):
    """Runs ``fiftyone delegated launch`` until the queued operation ``op_id`` ends; its document."""
    svc = DelegatedOperationService()
    assert svc.get(op_id).run_state == ExecutionRunState.QUEUED

    exe = shutil.which("fiftyone", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "fiftyone.core.cli"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd + ["delegated", "launch"], stdout=f, stderr=subprocess.STDOUT,
                                env=os.environ.copy(), start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            state = svc.get(op_id).run_state
            if state in (ExecutionRunState.COMPLETED, ExecutionRunState.FAILED):
                break
            time.sleep(1)
        doc = svc.get(op_id)
        assert doc.run_state == ExecutionRunState.COMPLETED, (doc.result and doc.result.error, log.read_text())
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # the launcher stops on ctrl + c
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return doc
