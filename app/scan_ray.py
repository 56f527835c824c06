"""``bodypart scan --engine ray``: the same scan on a Ray cluster, with Ray Data.

    listing (the driver: scan_table.write_listing) -> read_parquet -> blocks of FILES_PER_TASK files
      -> map_batches(read_files_task)     CPU tasks: prepare_files, what a reader process does
      -> map_batches(Classifier)          actor pool: the ensemble (num_gpus=1 each where GPUs exist)
      -> driver: ScanTable               Parquet parts, whole or absent, as the local engine writes them

The per-file work is the local engine's own (:func:`~operators.input.batching.prepare_files`,
:func:`~operators.model.classify.classify_batch`, :func:`~operators.outputs.scan_table.scan_row`);
only the scheduling differs. The driver writes the table, so resume works exactly as for the
local engine.

What the reader pool does for damaged files is done here with Ray: errors that raise fail their
file with the reason, as in a reader; a task whose worker dies (a decoder crash, the OOM killer,
the per-file time limit: ``faulthandler`` ends the worker, from a thread that needs no GIL) is
retried once, then its block is dropped and the scan goes on (``max_errored_blocks = -1``); the
files of dropped blocks are read again one per task, and a file whose worker dies again is
recorded ``failed``. The archive, the model package and the output folder (whose ``.listing`` the
read tasks read) must be at the same paths on every node.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import pickle
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

from operators.input.batching import DecodeOptions
from operators.input.preprocessing import Preprocessing
from operators.input.discovery import display_path, relative_source
from operators.outcome import InputOutcome, Status, short_reason
from operators.outputs.dicom_outputs import OutputRecord
from operators.outputs.scan_table import ScanTable, read_listing, scan_row

log = logging.getLogger("bodypart")

#: Files per read task: small, so that a file that kills its worker costs few others a re-read.
FILES_PER_TASK = 4
#: Retries of a read task whose worker died, before its files are read one per task (once each:
#: a file that kills its worker kills it again).
READ_RETRIES = 1
#: Environment that sets the read tasks' workers apart: a reader caps its own memory and offers
#: itself to the OOM killer, which Ray's other tasks must not inherit.
READER_ENV = {"env_vars": {"BODYPART_RAY_READER": "1"}}


class RayEngineError(RuntimeError):
    """Ray cannot start or be joined (the scan has not begun)."""


def start_ray(address: str | None, cpus: int | None):
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` runs here), or start a
    local one with ``cpus`` CPUs; Ray's own progress bars and driver log echo off."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RayEngineError("the Ray engine needs Ray Data: pip install 'ray[data]'") from e
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        else:  # "local": never a cluster that RAY_ADDRESS or an earlier `ray start` names
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayEngineError(f"cannot {'join Ray at ' + address if address else 'start Ray'}: {e}") from e
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the scan's own bar counts files
    ctx.max_errored_blocks = -1  # a block lost to a crashing decoder must not end the scan
    # rows reach the table in the listing's order: a multi-frame file's frames, split over two
    # classifier batches on two actors, stay together, so the table can tell a file half recorded
    ctx.execution_options.preserve_order = True
    return ray


def read_files_task(batch: dict, root: str, preprocessing: Preprocessing, decode: DecodeOptions) -> dict:
    """Ray Data task: read and preprocess the files of ``batch`` (columns path as bytes, size,
    mtime_ns); one row per outcome, the prepared item and its tensor pickled in ``prepared``."""
    from operators.input.batching import prepare_in_reader, start_reader

    start_reader(decode)
    out: dict[str, list] = {"path": [], "size": [], "mtime_ns": [], "prepared": []}
    for raw, size, mtime in zip(batch["path"], batch["size"], batch["mtime_ns"]):
        path = Path(os.fsdecode(raw))
        if decode.seconds_per_file:  # a decoder looping in native code holds the GIL: a C thread ends the worker
            faulthandler.dump_traceback_later(decode.seconds_per_file, exit=True)
        try:
            prepared = prepare_in_reader([path], Path(root), preprocessing, decode)
        except Exception as e:  # noqa: BLE001 - as a reader does: the file fails, the others go on
            prepared = [(InputOutcome(relative_source(path, Path(root)), Status.FAILED,
                                      f"cannot read: {type(e).__name__}: {short_reason(e)}"), None)]
        finally:
            if decode.seconds_per_file:
                faulthandler.cancel_dump_traceback_later()
        for item, tensor in prepared:
            out["path"].append(raw)
            out["size"].append(int(size))  # -1: not stat'ed (a null would turn the column into floats)
            out["mtime_ns"].append(int(mtime))
            out["prepared"].append(pickle.dumps((item, None if tensor is None else tensor.numpy())))
    return out


class Classifier:
    """Ray Data actor: one loaded ensemble, classifying prepared rows into table rows."""

    def __init__(self, package_path: str, device: str | None, stacker: str | None = None):
        import torch

        from operators.catalogue import Catalogue
        from operators.model.ensemble import Ensemble
        from operators.model.model_package import load_package

        if not device or device == "cpu":
            torch.set_num_threads(1)  # the CPUs are the readers'; a batch of 16 still takes < 1 s
        package = load_package(Path(package_path))
        self.ensemble = Ensemble(package, device=device, stacker=stacker)
        self.preprocessing = package.preprocessing
        self.catalogue = Catalogue.default()

    def __call__(self, batch: dict):
        import torch

        from operators.input.batching import make_batch
        from operators.model.classify import classify_batch
        from operators.outputs.scan_table import rows_table

        items, tensors = [], []
        for blob in batch["prepared"]:
            item, tensor = pickle.loads(blob)
            items.append(item)
            if tensor is not None:
                tensors.append(torch.from_numpy(tensor))
        outcomes = classify_batch(self.ensemble, make_batch(items, tensors, self.preprocessing), self.catalogue)
        # no DICOM outputs on this engine: recorded as the local engine records a scan without them
        outcomes = [replace(o, outputs=OutputRecord()) if o.classification is not None else o for o in outcomes]
        rows = [scan_row(o, display_path(os.fsdecode(p)), _known(s), _known(m))
                for o, p, s, m in zip(outcomes, batch["path"], batch["size"], batch["mtime_ns"])]
        return rows_table(rows)


def _known(v) -> int | None:
    return int(v) if v >= 0 else None  # -1: the file could not be stat'ed


def cluster_gpus(ray, device: str | None) -> int:
    """The GPUs the scan's actors may use: none where ``device`` is cpu, else the cluster's."""
    return 0 if device == "cpu" else int(ray.cluster_resources().get("GPU", 0))


def run(ray, listing, table: ScanTable, package_path: Path, root: Path, preprocessing: Preprocessing,
        decode: DecodeOptions, batch_size: int, device: str | None, actors: int | None,
        on_rows: Callable[[list[dict]], None], read: Callable[..., dict] = read_files_task) -> int:
    """Scan the files of the ``listing`` folder into ``table``; the number of files whose blocks were
    lost twice (recorded as failed). ``read``: the read task (:func:`read_files_task`, or one that
    wraps it)."""
    gpus = cluster_gpus(ray, device)
    actors = actors or max(1, gpus)
    # an actor sees only the GPU Ray gave it, as cuda:0
    actor_device = "cuda" if gpus and (device or "cuda").startswith("cuda") else (device or "cpu")

    def scan_pass(ds, per_task: int, retries: int) -> set[bytes]:
        seen: set[bytes] = set()
        with warnings.catch_warnings():
            # Ray Data retries a task whose worker died forever by default; a file that crashes its
            # decoder must cost one retry, not the scan. Named per-task retries replace this in Ray 2.64.
            warnings.simplefilter("ignore", DeprecationWarning)
            # blocks of exactly per_task files, made as the listing streams in (no barrier)
            prepared = ds.repartition(target_num_rows_per_block=per_task, strict=True).map_batches(
                read, batch_size=per_task, num_cpus=1, max_retries=retries, runtime_env=READER_ENV,
                fn_kwargs={"root": str(root), "preprocessing": preprocessing, "decode": decode})
        classified = prepared.map_batches(
            # a CPU actor reserves no CPU: the readers' work is 20 times its own (as in the local engine,
            # whose readers take every core while the main process classifies)
            Classifier, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0,
            num_cpus=1 if gpus else 0, fn_constructor_kwargs={"package_path": str(package_path), "device": actor_device})
        for part in classified.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = part.to_pylist()
            table.add_rows(rows)
            seen.update(r["path"] for r in rows)
            on_rows(rows)
        return seen

    # the driver holds the display path of each file read (about 100 bytes a file)
    seen = scan_pass(ray.data.read_parquet(str(listing)), FILES_PER_TASK, READ_RETRIES)
    lost = [r for r in read_listing(listing) if display_path(os.fsdecode(r["path"])) not in seen]
    if not lost:
        return 0
    log.warning("%d files were in blocks whose Ray worker died; reading them again one per task", len(lost))
    seen = scan_pass(ray.data.from_items(lost), 1, 0)
    failed = [r for r in lost if display_path(os.fsdecode(r["path"])) not in seen]
    limit = f", or over {decode.seconds_per_file:g} s" if decode.seconds_per_file else ""
    reason = f"its Ray worker died reading it, {READ_RETRIES + 2} times (a decoder crash, the OOM killer{limit})"
    for r in failed:
        row = scan_row(InputOutcome(r["source"], Status.FAILED, reason), display_path(os.fsdecode(r["path"])),
                       _known(r["size"]), _known(r["mtime_ns"]))
        table.add_rows([row])
        on_rows([row])
    return len(failed)
