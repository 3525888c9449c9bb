"""A labelling run claims its label field, so that two runs with different settings never write
one field at the same time (their labels would end up under one run's ``mask_targets``).

The claim is one document per (dataset, field) in FiftyOne's database (collection
``fiftyone_cass_claims``), holding the settings hash (``config_id``) and the runs that hold it:

* a run with the same settings joins the claim (``--shard`` workers, delegated shards, a rerun);
* a run with other settings is refused at start with :class:`FieldClaimedError`, naming the field
  and the run that holds it; the check and the claim are one atomic database operation (an upsert
  keyed by dataset and field, filtered by ``config_id``), so of two runs started together exactly
  one proceeds;
* a run releases its hold when it ends, whatever the outcome; a holder that died without
  releasing (``kill -9``, a crash) is recognised as dead when it ran on this host, and its hold
  is dropped by the next run. Holders on other hosts are released by hand:
  ``fiftyone-cass release DATASET --label-field FIELD`` or :func:`release_field`.
"""

from __future__ import annotations

import datetime
import os
import socket
import uuid
import weakref
from typing import Any, Dict, List, Optional

from fiftyone_cass.errors import InvalidInputError

COLLECTION = "fiftyone_cass_claims"


class FieldClaimedError(InvalidInputError):
    """The label field is being written by a run with other settings."""


def _collection():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[COLLECTION]


def _key(dataset, field: str) -> str:
    return f"{dataset._doc.id}:{field}"


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def holder_is_dead(holder: Dict[str, Any]) -> bool:
    """True for a holder that ran on this host and whose process is gone."""
    return holder.get("host") == _host() and not _pid_alive(holder.get("pid", -1))


def _describe(doc: Dict[str, Any]) -> str:
    runs = "; ".join(
        f"pid {h.get('pid')} on {h.get('host')} since {h.get('since'):%Y-%m-%d %H:%M:%S} UTC"
        if isinstance(h.get("since"), datetime.datetime) else f"pid {h.get('pid')} on {h.get('host')}"
        for h in doc.get("holders", [])
    )
    return f"settings {doc.get('config_id')} ({runs or 'no live run recorded'})"


class FieldClaim:
    """The hold of one run on ``dataset``'s ``field`` for settings ``config_id``."""

    def __init__(self, dataset, field: str, config_id: str):
        self.dataset = dataset
        self.field = field
        self.config_id = config_id
        self.run_id = uuid.uuid4().hex
        self.held = False

    def acquire(self) -> None:
        from pymongo import ReturnDocument
        from pymongo.errors import DuplicateKeyError

        coll = _collection()
        key = _key(self.dataset, self.field)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        me = {"run": self.run_id, "host": _host(), "pid": os.getpid(), "since": now}
        for _ in range(5):
            try:
                coll.find_one_and_update(
                    {"_id": key, "config_id": self.config_id},
                    {"$push": {"holders": me},
                     "$setOnInsert": {"dataset": self.dataset.name, "field": self.field, "created": now}},
                    upsert=True, return_document=ReturnDocument.AFTER,
                )
                self.held = True
                return
            except DuplicateKeyError:
                other = coll.find_one({"_id": key})
                if other is None:
                    continue  # released meanwhile: try again
                holders: List[Dict[str, Any]] = other.get("holders", [])
                live = [h for h in holders if not holder_is_dead(h)]
                if len(live) < len(holders):  # drop the dead holders (only if nothing changed meanwhile)
                    if live:
                        coll.update_one({"_id": key, "holders": holders}, {"$set": {"holders": live}})
                    else:
                        coll.delete_one({"_id": key, "holders": holders})
                    continue
                what = ("being written by a concept heatmap run" if str(other.get("config_id", "")).startswith("heatmap:")
                        else "being labelled by another run")
                raise FieldClaimedError(
                    f"field {self.field!r} of dataset {self.dataset.name!r} is {what} with "
                    f"other settings: {_describe(other)}. Wait for it to finish, or write another field. If that "
                    f"run is no longer running, release the field with: fiftyone-cass release "
                    f"{self.dataset.name} --label-field {self.field}"
                ) from None
        raise FieldClaimedError(f"field {self.field!r} of dataset {self.dataset.name!r}: could not claim it (contended)")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            coll = _collection()
            key = _key(self.dataset, self.field)
            coll.update_one({"_id": key}, {"$pull": {"holders": {"run": self.run_id}}})
            coll.delete_one({"_id": key, "holders": {"$size": 0}})
        except Exception:  # noqa: BLE001 - a claim left behind is recovered by the next run
            pass


class ClaimedRun:
    """A run over samples that holds a :class:`FieldClaim` on the field it writes from its plan to
    its end (labelling runs, concept heatmap runs): :meth:`claimed_plan` claims the field before
    looking at it (check and claim are atomic), plans, and gives the claim up when planning fails;
    :meth:`release` gives it up at the end (and a finalizer when the run is never run)."""

    _claim: Optional[FieldClaim] = None

    def claimed_plan(self, dataset, field: str, config_id: str, plan, on_claim=None):
        """``plan()`` under this run's claim of ``dataset``'s ``field`` for ``config_id``;
        ``on_claim()`` runs once, just after the claim is acquired."""
        if self._claim is None or not self._claim.held:
            self._claim = FieldClaim(dataset, field, config_id)
            self._claim.acquire()
            self._release = weakref.finalize(self, self._claim.release)  # also if never run
            if on_claim is not None:
                on_claim()
        try:
            return plan()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Gives up this run's claim on its field (done at the end of the run)."""
        if self._claim is not None:
            self._claim.release()


def field_claim(dataset, field: str) -> Optional[Dict[str, Any]]:
    """The claim document of ``dataset``'s ``field`` (None: free)."""
    return _collection().find_one({"_id": _key(dataset, field)})


def live_local_holders(doc: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The holders of a claim document that run on this host and whose process is alive."""
    return [h for h in (doc or {}).get("holders", []) if h.get("host") == _host() and _pid_alive(h.get("pid", -1))]


class FieldInUseError(InvalidInputError):
    """A release asked for a field that a live run on this host is writing."""


def release_field(dataset, field: str, force: bool = False) -> bool:
    """Drops any claim on ``dataset``'s ``field`` (for a run that died on another host). Returns
    whether there was one. A claim held by a run that is alive on this host is not released
    (:class:`FieldInUseError`, naming its process) unless ``force``: releasing it would let a run
    with other settings write the field beside it."""
    doc = field_claim(dataset, field)
    if doc is None:
        return False
    alive = live_local_holders(doc)
    if alive and not force:
        pids = ", ".join(str(h.get("pid")) for h in alive)
        raise FieldInUseError(
            f"field {field!r} of dataset {dataset.name!r} is being labelled right now by process {pids} on this "
            "machine: stop that run (ctrl + c) instead of releasing its claim; release it anyway only if that "
            "process is not a labelling run (force=True)"
        )
    return _collection().delete_one({"_id": _key(dataset, field)}).deleted_count > 0


__all__ = ["ClaimedRun", "FieldClaim", "FieldClaimedError", "FieldInUseError", "field_claim", "holder_is_dead", "live_local_holders",
           "release_field"]
