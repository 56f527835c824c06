"""``bodypart scan ARCHIVE -o OUT``: classify a whole archive into a Parquet table, resumably.

The same per-file work as the app (reader processes, the ensemble, optionally the DICOM
outputs) through the same :class:`~operators.pipeline.Pipeline`, in this process without the
Holoscan graph; results go to :class:`~operators.outputs.scan_table.ScanTable` instead of
``results.json``. Run it again after a kill or a crash: files already in the table are skipped
(same path, size and modification time), the rest are read, none is recorded twice.

``engine="ray"`` schedules the same per-file work on a Ray cluster (:mod:`app.scan_ray`) and
writes the same table.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

log = logging.getLogger("bodypart")


ENGINES = ("local", "ray")


def scan(archive: Path, output: Path, models: Path | None = None, batch_size: int = 16, workers: int | None = None,
         dicom_outputs: bool = False, device: str | None = None, progress: bool = True, engine: str = "local",
         ray_address: str | None = None, ray_actors: int | None = None, follow_links: bool = False) -> Path:
    """Scan ``archive`` into ``output``, then write the archive report (``OUT/report.html``); return
    ``OUT/scan.json`` (``complete`` says whether it finished).

    Parameters
    ----------
    workers
        Reader processes (local engine), or the CPUs of the local Ray instance it starts (Ray
        engine without ``ray_address``); default: the usable cores.
    engine
        ``local`` (this machine, reader processes) or ``ray`` (Ray Data on the cluster at
        ``ray_address``, or a local one); ``ray_actors``: ensemble actors (default: one per GPU, or one).
    follow_links
        Read through links to outside ``archive`` (a farm of links to the real files).

    Raises
    ------
    FileNotFoundError
        ``archive`` does not exist.
    ValueError
        An unknown engine, or DICOM outputs asked of the Ray engine.
    ModelPackageError, OutputError, RayEngineError
        The model package, the output folder or Ray cannot be used (before any file is read).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "ray" and dicom_outputs:
        # an SR covers a whole study, whose images the actors see apart: write them with a local run
        raise ValueError("--dicom-outputs needs the local engine (SRs cover whole studies)")
    from tqdm import tqdm

    from app.app import resolve_model_path
    from operators.input.batching import DecodeOptions, default_workers, iter_batches
    from operators.model.ensemble import Ensemble
    from operators.model.model_package import load_package
    from operators.outputs.output_files import OutputFolderLock
    from operators.outputs.report import Progress
    from operators.outputs.scan_table import ScanTable, read_listing
    from operators.pipeline import BatchFeed, Pipeline

    archive, output = Path(archive), Path(output)
    if not archive.exists():
        raise FileNotFoundError(f"archive {archive} does not exist")
    lock = OutputFolderLock(output).acquire()
    try:
        package_path = resolve_model_path(models)
        package = load_package(package_path)
        decode = DecodeOptions(follow_links=follow_links)
        if engine == "ray":
            return _scan_ray(archive, output, package, package_path, decode, batch_size, workers, device, progress,
                             ray_address, ray_actors)
        ensemble = Ensemble(package, device=device)
        table = ScanTable(output, {"archive": str(archive), "engine": "local", "model": ensemble.info.to_json()})
        listing, todo = _list(table, archive, output, follow_links)

        def remaining() -> Iterator[Path]:
            for row in read_listing(listing):
                path = Path(os.fsdecode(row["path"]))
                if row["size"] >= 0:
                    table.expect(row["source"], path, row["size"], row["mtime_ns"])
                yield path

        workers = default_workers() if workers is None else workers
        pipeline = Pipeline(ensemble, output, archive, dicom_outputs=dicom_outputs, results=table, workers=workers)
        pipeline.progress = Progress(every=0, each=False)  # the bar shows progress; failures still logged
        feed = BatchFeed(iter_batches(archive, package.preprocessing, batch_size, workers, decode, files=remaining()),
                         pipeline.status)
        with tqdm(total=todo, unit="file", disable=not progress, smoothing=0.05) as bar:
            for batch in feed:
                outcomes = pipeline.add(batch)
                bar.update(len({o.source for o in outcomes}))
        pipeline.close(all_inputs_read=False)  # the feed says whether every input was read
        return _finish(output, listing)
    finally:
        lock.release()


def _list(table, archive: Path, output: Path, follow_links: bool) -> tuple[Path, int]:
    """List what ``table``'s earlier scans left to read (``OUT/.listing``); (listing, how many)."""
    from operators.outputs.scan_table import write_listing

    done = table.done()  # held only while listing
    listing, todo = write_listing(archive, output, done, follow_links)
    log.info("%s: %d inputs to read, %d done by an earlier scan", archive, todo, len(done))
    return listing, todo


def _finish(output: Path, listing: Path) -> Path:
    """After the table is closed: drop the listing, write the archive report; ``OUT/scan.json``."""
    from operators.outputs.archive_report import write_report

    shutil.rmtree(listing, ignore_errors=True)
    log.info("archive report: %s", write_report(output))
    return output / "scan.json"


def _scan_ray(archive: Path, output: Path, package, package_path: Path, decode, batch_size: int, cpus: int | None,
              device: str | None, progress: bool, address: str | None, actors: int | None) -> Path:
    """The Ray engine's scan (the caller holds the output folder's lock)."""
    from tqdm import tqdm

    from app import scan_ray
    from operators.model.ensemble import model_info
    from operators.outputs.scan_table import ScanTable

    table = ScanTable(output, {"archive": str(archive), "engine": "ray", "ray_address": address, "ray_nodes": None})
    listing = todo = None
    if any(table.folder.glob("part-*.parquet")):  # a rescan (parts are written only with rows): list first, as a finished archive needs no Ray (a first scan finds a wrong address first)
        listing, todo = _list(table, archive, output, decode.follow_links)
        if not todo:
            log.info("nothing left to read: Ray not started")
            table.run_info["model"] = model_info(package, device=device or "none (nothing to classify)").to_json()
            table.close()
            return _finish(output, listing)
    ray = None
    try:
        ray = scan_ray.start_ray(address, cpus)
        info = model_info(package, device=device or ("cuda" if scan_ray.cluster_gpus(ray, device) else "cpu")).to_json()
        table.run_info.update(ray_nodes=len(ray.nodes()), model=info)
        log.info("Ray: %s", ", ".join(f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU")))
        if listing is None:
            listing, todo = _list(table, archive, output, decode.follow_links)
        interrupted = None
        with tqdm(total=todo, unit="file", disable=not progress, smoothing=0.05) as bar:
            def on_rows(rows: list[dict]) -> None:
                for r in rows:  # as the local engine's progress log does
                    if r["status"] == "failed":
                        log.warning("%s: failed: %s", r["source"], r["reason"])
                bar.update(len({r["source"] for r in rows}))

            try:
                scan_ray.run(ray, listing, table, package_path, archive, package.preprocessing, decode,
                             batch_size, device, actors, on_rows)
            except KeyboardInterrupt:
                interrupted = "interrupted (Ctrl-C)"
                raise
            except Exception as e:  # noqa: BLE001 - the cluster went away, the disk is full: keep what was recorded
                interrupted = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log.error("the scan stopped: %s", interrupted)
                log.debug("the scan stopped", exc_info=True)
            finally:
                table.close(interrupted=interrupted)
        return _finish(output, listing)
    except BaseException:
        if listing is not None and not table.closed:  # stopped before the scan began: nothing to resume from it
            shutil.rmtree(listing, ignore_errors=True)
        raise
    finally:
        if ray is not None:
            ray.shutdown()
