"""``bodypart scan ARCHIVE -o OUT``: classify a whole archive into a Parquet table, resumably.

The same per-file work as the app (reader processes, the ensemble, optionally the DICOM
outputs) through the same :class:`~operators.pipeline.Pipeline`, in this process without the
Holoscan graph; results go to :class:`~operators.outputs.scan_table.ScanTable` instead of
``results.json``. Run it again after a kill or a crash: files already in the table are skipped
(same path, size and modification time), the rest are read, none is recorded twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

log = logging.getLogger("bodypart")


def scan(archive: Path, output: Path, models: Path | None = None, batch_size: int = 16, workers: int | None = None,
         dicom_outputs: bool = False, device: str | None = None, progress: bool = True) -> Path:
    """Scan ``archive`` into ``output``, then write the archive report (``OUT/report.html``); return
    ``OUT/scan.json`` (``complete`` says whether it finished).

    Raises
    ------
    FileNotFoundError
        ``archive`` does not exist.
    ModelPackageError, OutputError
        The model package or the output folder cannot be used (before any file is read).
    """
    from tqdm import tqdm

    from app.app import resolve_model_path
    from operators.input.batching import default_workers, iter_batches
    from operators.input.discovery import iter_input_files, relative_source
    from operators.model.ensemble import Ensemble
    from operators.model.model_package import load_package
    from operators.outputs.output_files import OutputFolderLock
    from operators.outputs.archive_report import write_report
    from operators.outputs.report import Progress
    from operators.outputs.scan_table import ScanTable, file_key
    from operators.pipeline import BatchFeed, Pipeline

    archive, output = Path(archive), Path(output)
    if not archive.exists():
        raise FileNotFoundError(f"archive {archive} does not exist")
    lock = OutputFolderLock(output).acquire()
    try:
        package = load_package(resolve_model_path(models))
        ensemble = Ensemble(package, device=device)
        table = ScanTable(output, {"archive": str(archive), "model": ensemble.info.to_json()})
        done = table.done()
        todo = sum(1 for p in iter_input_files(archive) if file_key(p, relative_source(p, archive)) not in done)
        log.info("%s: %d inputs to read, %d done by an earlier scan", archive, todo, len(done))

        def remaining() -> Iterator[Path]:
            for path in iter_input_files(archive):
                source = relative_source(path, archive)
                key = file_key(path, source)
                if key in done:
                    continue
                if key is not None:
                    table.expect(source, path, key[1], key[2])
                yield path

        workers = default_workers() if workers is None else workers
        pipeline = Pipeline(ensemble, output, archive, dicom_outputs=dicom_outputs, results=table, workers=workers)
        pipeline.progress = Progress(every=0, each=False)  # the bar shows progress; failures still logged
        feed = BatchFeed(iter_batches(archive, package.preprocessing, batch_size, workers, files=remaining()),
                         pipeline.status)
        with tqdm(total=todo, unit="file", disable=not progress, smoothing=0.05) as bar:
            for batch in feed:
                outcomes = pipeline.add(batch)
                bar.update(len({o.source for o in outcomes}))
        pipeline.close(all_inputs_read=False)  # the feed says whether every input was read
        report = write_report(output)
        log.info("archive report: %s", report)
        return output / "scan.json"
    finally:
        lock.release()
