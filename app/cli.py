"""``bodypart``: the command line for people (the MONAI Deploy entry point is ``python -m app``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DESCRIPTION = """\
Identify the body part(s) shown in plain radiographs (CR/DX DICOM).

Commands:
  inspect   read a folder of DICOM files with the input stage alone: which files are
            radiographs, how each was decoded, and a contact sheet of the grey images
  demo      run the app on bundled sample radiographs (from the pydicom-data package)
  run       run the app (same as `python -m app -i IN -o OUT -m MODELS`), or on a study pulled
            from a DICOMweb server (--from-dicomweb URL --study UID), results sent on (--send-to)
  send      send a run's SRs and corrected copies to a DICOMweb server or a DICOM node
  scan      classify a whole archive into a Parquet table; run it again to resume
  train     train, evaluate and export a model package from labelled radiographs
  map-context
            lay out the MONAI Application Package build context (then `monai-deploy package`)

Every input appears in the results with its outcome (ready/classified, skipped, failed and why).
Source files are never modified.
"""


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="read inputs with the input stage and report", description=(
        "Read every file under INPUT (recursively; names with or without .dcm) and write "
        "OUTPUT/inputs.json (one entry per input with its outcome) and OUTPUT/contact_sheet.png."))
    p.add_argument("input", type=Path, help="a DICOM file or a folder of them")
    p.add_argument("-o", "--output", type=Path, default=Path("out/inspect"), help="output folder (default: %(default)s)")
    p.add_argument("--max-side", type=int, default=1024, help="longest side kept after decoding (default: %(default)s)")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the app on bundled sample radiographs", description=(
        "Copy sample radiographs from the pydicom-data package into OUTPUT/input, run the app with the "
        "default model into OUTPUT/output and print what it found."))
    p.add_argument("-o", "--output", type=Path, default=Path("out/demo"), help="output folder (default: %(default)s)")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the MONAI Deploy app", description=(
        "Classify every radiograph under INPUT; write OUTPUT/results.json, OUTPUT/sr (structured reports), "
        "OUTPUT/dicom (corrected copies) and OUTPUT/results.png. Each setting below overrides app.yaml's "
        "bodypart: section, as its BODYPART_* environment variable does."))
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-i", "--input", type=Path, help="a DICOM file or a folder")
    source.add_argument("--from-dicomweb", metavar="URL", help="DICOMweb base URL to pull --study from (QIDO-RS, WADO-RS)")
    p.add_argument("--study", metavar="UID", help="Study Instance UID to pull (with --from-dicomweb)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("-m", "--models", type=Path, help="model package (default: the shipped default)")
    p.add_argument("--send-to", metavar="URL|AE@HOST:PORT", help="send the SRs and corrected copies there when the run "
                   "has completed (STOW-RS to a DICOMweb URL, C-STORE to a DICOM node)")
    _add_network_options(p)
    from app.settings import OPTIONS

    settings = p.add_argument_group("settings (app/settings.py; checked by the app)")
    for option in OPTIONS:
        values = {"flag": "0|1", "int": "N", "device": "cuda|cuda:N|cpu", "path": "FOLDER"}.get(option.kind, "|".join(option.choices))
        settings.add_argument(option.flag, dest=f"setting_{option.key}", metavar=values,
                              help=f"{option.help.replace('`', '').replace('%', '%%')} (default: {option.default_text.replace('`', '')}; "
                                   f"{option.env})")


def _settings(overrides: dict[str, str] | None):
    """The app's settings as it will read them: app.yaml's (or HOLOSCAN_CONFIG_PATH's) ``bodypart:``
    section, then BODYPART_* variables and ``overrides``. Raises ``SettingsError`` as the app would."""
    import os

    import yaml

    from app.settings import SECTION, Settings, SettingsError, existing_config_path

    env = {**os.environ, **(overrides or {})}
    config = existing_config_path(env)
    try:
        doc = yaml.safe_load(config.read_text()) if config else None
    except yaml.YAMLError as e:
        raise SettingsError(f"config file {config} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"config file {config} cannot be read: {e}") from None
    if doc is not None and not isinstance(doc, dict):
        raise SettingsError(f"config file {config}: not a mapping of sections")
    return Settings.load((doc or {}).get(SECTION), env, config_name=str(config) if config else "app.yaml")


def _run_app(inputs: Path, output: Path, models: Path | None, log, settings: dict[str, str] | None = None) -> int:
    """Run ``python -m app`` as MONAI Deploy does (``settings``: BODYPART_* overrides), then
    summarise results.json for a person."""
    import json
    import os
    import subprocess

    inputs, output = Path(inputs).resolve(), Path(output).resolve()  # the app runs in the checkout's folder
    models = Path(models).resolve() if models else None
    cmd = [sys.executable, "-m", "app", "-i", str(inputs), "-o", str(output)] + (["-m", str(models)] if models else [])
    env = {**os.environ, **(settings or {})}
    if env.get("HOLOSCAN_CONFIG_PATH"):  # the file checked here, not one beside the checkout
        env["HOLOSCAN_CONFIG_PATH"] = str(Path(env["HOLOSCAN_CONFIG_PATH"]).resolve())
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env)
    results = output / "results.json"
    if proc.returncode != 0 or not results.is_file():
        log.error("the app failed (exit %d); see the log above", proc.returncode)
        return proc.returncode or 1
    doc = json.loads(results.read_text())
    from app.summary import results_sheet, results_table

    print(results_table(doc))
    sheet = results_sheet(doc, inputs, output / "results.png")
    from app.settings import Settings, SettingsError

    try:
        sr_dir, corrected_dir = _settings(settings).folders(output)  # as the app, which checked them, read them
    except SettingsError:  # the config changed during the run: the defaults' folders
        sr_dir, corrected_dir = Settings().folders(output)
    print(f"\nresults: {results}\nstructured reports: {sr_dir}\ncorrected copies: {corrected_dir}" +
          (f"\npicture: {sheet}" if sheet else ""))
    return 0


def _run_pulled(args, auth, log, overrides: dict[str, str]) -> int:
    """Pull ``args.study`` from ``args.from_dicomweb`` into a temporary folder and run the app on it."""
    import tempfile

    from operators.dicom_network import NetworkError, pull_study

    with tempfile.TemporaryDirectory(prefix="bodypart-pull-") as tmp:
        try:
            pull_study(args.from_dicomweb, args.study, Path(tmp), auth, timeout=args.timeout)
        except NetworkError as e:
            log.error("%s", e)
            return 1
        return _run_app(Path(tmp), args.output, args.models, log, overrides)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train, evaluate and export a model package", description=(
        "Train every member of CONFIG on labelled data, fit the stackers and thresholds on the validation "
        "split, evaluate on the test split (report.md, figures/, metrics.json) and export OUTPUT/package, "
        "which `python -m app -m OUTPUT/package` loads. Resumes from checkpoints in OUTPUT."))
    p.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "training/configs/default.yaml",
                   help="training config YAML/JSON (default: training/configs/default.yaml)")
    p.add_argument("--data", type=Path, action="append", required=True,
                   help="labelled data: a labels.csv (or folder with one), a UNIFESP folder (train.csv), or class folders; repeatable")
    p.add_argument("--layout", choices=["csv", "unifesp", "folders"], help="data layout (default: guessed)")
    p.add_argument("--holdout-source", action="append", default=[], help="put every image of this source in the test split; repeatable")
    p.add_argument("--test-data", type=Path, action="append", default=[],
                   help="labelled data for testing only (other hospitals' films), a held-out source of its own; repeatable")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--workers", type=int, help="override the config's data-loader processes")
    p.add_argument("--max-minutes-per-member", type=float,
                   help="time budget per member: stop before an epoch that would not end in it (best epoch kept)")
    p.add_argument("--tta", type=int, choices=(0, 1), help="override the config's test-time augmentation (1: the "
                   "members average each image and its flips, in validation, test and the package; 3x the work)")
    p.add_argument("--init-from", type=Path, metavar="PACKAGE",
                   help="start each member from the same member of this model package (fine-tuning it) instead of "
                        "the config's initial weights")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run folder")


def _add_scan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="classify an archive into a Parquet table (resumable)", description=(
        "Classify every file under ARCHIVE with bounded memory into OUTPUT/results/part-*.parquet (one row per "
        "input, the fields of results.json plus path, size and modification time) and OUTPUT/scan.json. Run it "
        "again after a kill or a crash: what is in the table is skipped, the rest is read."))
    p.add_argument("archive", type=Path, help="a folder of DICOM files (any depth)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (the table, and DICOM outputs if asked)")
    p.add_argument("-m", "--models", type=Path, help="model package (default: the shipped default)")
    p.add_argument("--batch-size", type=int, default=16, help="images per network batch (default: %(default)s)")
    p.add_argument("--workers", type=int, help="reader processes (default: usable cores)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when present)")
    p.add_argument("--dicom-outputs", action="store_true", help="also write the SRs and corrected copies (off for scans)")
    p.add_argument("--follow-links", action="store_true", help="read through links to files outside ARCHIVE")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine's reader processes; ray: Ray Data on a cluster (default: %(default)s)")
    p.add_argument("--ray-address", metavar="ADDRESS",
                   help="join this Ray cluster from one of its nodes (auto: the one `ray start` runs here, or HEAD:6379); "
                        "without it a local Ray starts with --workers CPUs")
    p.add_argument("--ray-actors", type=int, metavar="N", help="ensemble actors (default: one per GPU of the cluster, or one)")


def _add_send(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("send", help="send a run's DICOM outputs", description=(
        "Send the SRs and corrected copies that OUTPUT/results.json lists, SRs first, one instance at a time. "
        "Instances that could not be sent are named; the files stay in OUTPUT."))
    p.add_argument("output", type=Path, help="a run's output folder")
    p.add_argument("--to", required=True, metavar="URL|AE@HOST:PORT", help="DICOMweb base URL (STOW-RS) or DICOM node (C-STORE)")
    _add_network_options(p)


def _add_network_options(p: argparse.ArgumentParser) -> None:
    net = p.add_argument_group("DICOM networking (credentials from the environment: not on the command line)")
    net.add_argument("--timeout", type=float, default=30.0, help="seconds a connection or answer may take (default: %(default)s)")
    net.add_argument("--calling-ae", default="BODYPART", help="our AE title for C-STORE (default: %(default)s)")
    net.add_argument("--dicomweb-user", help="HTTP basic user; the password comes from BODYPART_DICOMWEB_PASSWORD "
                     "(a bearer token from BODYPART_DICOMWEB_TOKEN instead)")


def _network(args, log) -> tuple | int:
    """The auth and destination of ``args``; an exit code when they do not fit."""
    import os

    from operators.dicom_network import Destination, DicomwebAuth, check_url

    try:
        target = getattr(args, "send_to", None) or getattr(args, "to", None)
        destination = Destination.parse(target) if target else None
        web = getattr(args, "from_dicomweb", None) or (destination is not None and destination.url)
        auth = DicomwebAuth(token=os.environ.get("BODYPART_DICOMWEB_TOKEN") or None, user=args.dicomweb_user,
                            password=os.environ.get("BODYPART_DICOMWEB_PASSWORD") or None) if web else None
        if getattr(args, "study", None) and not getattr(args, "from_dicomweb", None):
            raise ValueError("--study goes with --from-dicomweb URL")
        if getattr(args, "from_dicomweb", None):
            check_url(args.from_dicomweb)
    except ValueError as e:
        log.error("%s", e)
        return 2
    return auth, destination


def _send(output: Path, destination, auth, args, log) -> int:
    from operators.dicom_network import NetworkError, result_files, send_files

    try:
        files = result_files(output)
        if not files:
            log.warning("%s: no SR or corrected copy to send", output)
            return 0
        report = send_files(files, destination, auth, timeout=args.timeout, calling_ae=args.calling_ae)
    except NetworkError as e:
        log.error("%s; nothing was sent, the files stay in %s", e, output)
        return 1
    (log.info if report.ok else log.error)("%s", report.summary())
    return 0 if report.ok else 1


def _add_map(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("map-context", help="lay out the MAP build context", description=(
        "Create DEST with app/ (a self-contained application folder), app.yaml and models/, and print the "
        "`monai-deploy package` command that builds the MAP (needs holoscan-cli 4.2 and Docker buildx)."))
    p.add_argument("dest", type=Path, help="folder to create (replaced if it exists)")
    p.add_argument("-m", "--models", type=Path, help="model package (default: the shipped default)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bodypart", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_inspect(sub)
    _add_demo(sub)
    _add_run(sub)
    _add_train(sub)
    _add_send(sub)
    _add_scan(sub)
    _add_map(sub)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2

    from operators.outputs.report import outcome_table, setup_logging

    setup_logging(args.verbose)
    log = logging.getLogger("bodypart")
    if args.command == "inspect":
        from app.input_report import inspect_inputs

        if not args.input.exists():
            log.error("input %s does not exist", args.input)
            return 2
        outcomes = inspect_inputs(args.input, args.output, max_side=args.max_side)
    elif args.command == "demo":
        from app.samples import write_samples

        inputs = write_samples(args.output / "input")
        return _run_app(inputs, args.output / "output", None, log)
    elif args.command == "run":
        from app.settings import OPTIONS, SettingsError

        overrides = {o.env: str(getattr(args, f"setting_{o.key}")) for o in OPTIONS
                     if getattr(args, f"setting_{o.key}") is not None}
        try:  # before a study is pulled or the app started: a wrong setting costs nothing
            _settings(overrides)
        except SettingsError as e:
            log.error("%s", e)
            return 2
        network = _network(args, log)
        if isinstance(network, int):
            return network
        auth, destination = network
        if args.from_dicomweb:
            if not args.study:
                log.error("--from-dicomweb needs --study UID")
                return 2
            code = _run_pulled(args, auth, log, overrides)
        else:
            code = _run_app(args.input, args.output, args.models, log, overrides)
        if code != 0 or destination is None:
            return code
        return _send(args.output, destination, auth, args, log)
    elif args.command == "scan":
        import json

        from app.scan import scan
        from app.scan_ray import RayEngineError
        from operators.model.model_package import ModelPackageError
        from operators.outputs.output_files import OutputError

        if args.engine != "ray" and (args.ray_address or args.ray_actors):
            log.error("--ray-address and --ray-actors need --engine ray")
            return 2
        try:
            path = scan(args.archive, args.output, args.models, args.batch_size, args.workers, args.dicom_outputs, args.device,
                        engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
                        follow_links=args.follow_links)
        except (FileNotFoundError, ValueError, ModelPackageError, OutputError, RayEngineError) as e:
            log.error("%s", e)
            return 2
        summary = json.loads(path.read_text())
        print(f"table: {args.output / 'results'}/ ({summary['parts']} parts); this scan: {summary['this_scan']}\n"
              f"report: {args.output / 'report.html'}")
        if not summary["complete"]:
            log.error("the scan did not complete: %s (run it again to resume)", summary["interrupted_reason"])
            return 1
        return 0
    elif args.command == "send":
        network = _network(args, log)
        if isinstance(network, int):
            return network
        auth, destination = network
        return _send(args.output, destination, auth, args, log)
    elif args.command == "train":
        from operators.model.model_package import ModelPackageError
        from training.config import TrainConfig
        from training.data import DataError
        from training.pipeline import run_training

        try:
            config = TrainConfig.load(args.config, device=args.device, epochs=args.epochs, num_workers=args.workers,
                                      max_minutes_per_member=args.max_minutes_per_member,
                                      tta=None if args.tta is None else bool(args.tta))
            if args.init_from:
                config = config.initialised_from(args.init_from)
            package = run_training(config, args.data, args.output, layout=args.layout,
                                   holdout_sources=args.holdout_source, resume=not args.no_resume, test_data=args.test_data)
        except (DataError, ValueError, FileNotFoundError, ModelPackageError) as e:
            log.error("%s", e)
            return 2
        print(f"package: {package}\nreport: {args.output / 'report.md'}")
        return 0
    elif args.command == "map-context":
        from app.map_context import build_context, package_command

        dest = build_context(args.dest, args.models)
        print(f"MAP build context in {dest}\nbuild it with:\n  {package_command(dest)}")
        return 0
    else:  # pragma: no cover - argparse restricts choices
        parser.error(f"unknown command {args.command}")
    print(outcome_table(outcomes))
    print(f"\nresults in {args.output}/ (inputs.json, contact_sheet.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
