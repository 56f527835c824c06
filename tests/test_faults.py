"""Faults: readers that crash or hang, inputs that are not plain files, image bombs, output
folders that are full, read-only or in use, runs that end early. Each fault is a test.

Tests that need root (a tmpfs to fill, capabilities to drop) say so and skip elsewhere, unless
``CI=true``, where they must run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from operators.input.batching import DecodeOptions, iter_prepared
from operators.input.image_limits import ImageLimits, check_image_header
from operators.outcome import InputOutcome, Status
from operators.outputs.output_files import OutputFolderBusy, OutputFolderLock, write_atomically
from operators.input.preprocessing import Preprocessing
from operators.input.processes import worker_context
from operators.input.discovery import iter_input_files
from operators.input.radiograph import read_file
from operators.input.reader_pool import ReaderPool, ReaderStartError
from operators.testing import dicom_factory as fac
from tests.conftest import ROOT, read_results, start_app_until_results

PRE = Preprocessing(size=64)
SMALL = "dx_pelvis_ddh_1.dcm"  # 34 KB


def needs_root(what: str) -> None:
    """Skip outside CI when not root; in CI (``CI=true``) a missing privilege is a failure."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} needs root in CI")
        pytest.skip(f"{what} needs root (CI runs it)")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A small filesystem of its own at ``path`` (root only), unmounted afterwards."""
    needs_root("a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mount tmpfs: {proc.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---------------------------------------------------------------------------------------------
# The reader pool, with readers that really crash, abort, hang and raise

def crash_or_echo(items: list[str]) -> list[str]:
    """A task for real reader processes: items name what to do to the reader."""
    for item in items:
        if item == "segv":
            ctypes.string_at(0)  # a real segmentation fault
        elif item == "abort":
            os.abort()
        elif item == "hang":
            time.sleep(3600)
        elif item == "raise":
            raise ValueError("bad item")
    return [f"ok:{i}" for i in items]


def as_failed(items: list[str], reason: str) -> list[str]:
    return [f"failed:{i}:{reason}" for i in items]


def exit_at_start() -> None:
    os._exit(3)


def test_a_reader_that_dies_or_hangs_costs_only_the_file_it_held():
    tasks = [["a"], ["segv"], ["b", "abort", "c"], ["hang"], ["raise"], ["d"], ["e", "raise", "f"]]
    with ReaderPool(2, crash_or_echo, as_failed, worker_context(), seconds_per_item=3) as pool:
        out = [r for batch in pool.imap(tasks, read_ahead=4) for r in batch]
        assert pool.replaced == 4  # segv, abort (in its chunk, then alone), hang: each reader replaced
    assert [o.split(":")[1] for o in out] == ["a", "segv", "b", "abort", "c", "hang", "raise", "d", "e", "raise", "f"]
    assert out[0] == "ok:a" and out[2] == "ok:b" and out[4] == "ok:c" and out[7] == "ok:d"
    assert "reader process died while decoding (SIGSEGV" in out[1]
    assert "reader process died while decoding (SIGABRT" in out[3]  # found by retrying the chunk file by file
    assert "longer than 3 s per file (time limit)" in out[5]
    assert out[6] == out[9] == "failed:raise:reader error: ValueError: bad item"
    assert out[8] == "ok:e" and out[10] == "ok:f"  # a chunk that raised is retried file by file too


def test_readers_that_cannot_start_end_the_run_with_a_reason():
    with pytest.raises(ReaderStartError, match="die before taking any work"):
        with ReaderPool(1, crash_or_echo, as_failed, worker_context(), initializer=exit_at_start) as pool:
            list(pool.imap([["a"]], read_ahead=1))


# ---------------------------------------------------------------------------------------------
# Inputs that are not plain files

@pytest.fixture
def odd_folder(corpus, tmp_path) -> Iterator[Path]:
    """One real radiograph among entries that are not plain files, plus its copies under odd names."""
    root = tmp_path / "in"
    root.mkdir()
    shutil.copyfile(corpus / SMALL, root / "good.dcm")
    os.mkfifo(root / "fifo.dcm")
    os.symlink("loop.dcm", root / "loop.dcm")
    os.symlink("missing.dcm", root / "broken.dcm")
    os.symlink(corpus / SMALL, root / "outside.dcm")
    os.symlink("good.dcm", root / "inside.dcm")
    (root / "sub").mkdir()
    shutil.copyfile(corpus / SMALL, root / "sub" / "nested.dcm")
    os.symlink("sub", root / "linked_folder")
    os.symlink("..", root / "sub" / "up")  # a folder loop when links are followed
    shutil.copyfile(corpus / SMALL, os.fsencode(root) + b"/caf\xe9.dcm")  # not UTF-8
    deep = root
    for _ in range(1200):  # deeper than Python's recursion limit; within PATH_MAX
        deep = deep / "d"
        os.mkdir(deep)  # one level at a time: Path.mkdir(parents=True) recurses
    shutil.copyfile(corpus / SMALL, deep / "deep.dcm")
    yield root
    # pytest's clean-up (shutil.rmtree) recurses once per level: take the deep chain down first
    os.unlink(deep / "deep.dcm")
    while deep != root:
        os.rmdir(deep)
        deep = deep.parent


EXPECTED = {
    "good.dcm": ("ready", None),
    "inside.dcm": ("ready", None),
    "sub/nested.dcm": ("ready", None),
    "caf\\xe9.dcm": ("ready", None),
    "/".join(["d"] * 1200) + "/deep.dcm": ("ready", None),
    "fifo.dcm": ("skipped", "not a regular file (FIFO)"),
    "loop.dcm": ("failed", "symbolic link loop"),
    "broken.dcm": ("failed", "broken symbolic link"),
    "outside.dcm": ("skipped", "symbolic link to outside the input folder"),
    "linked_folder": ("skipped", "symbolic link to a folder (not followed)"),
    "sub/up": ("skipped", "symbolic link to a folder (not followed)"),
}


def _outcomes(items) -> dict[str, tuple[str, str | None]]:
    out = {}
    for item, _ in items:
        status = item.status.value if isinstance(item, InputOutcome) else "ready"
        assert item.source not in out, f"{item.source} twice"
        out[item.source] = (status, item.reason if isinstance(item, InputOutcome) else None)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_every_entry_gets_an_outcome_and_nothing_is_read_through_a_link_to_outside(odd_folder, workers):
    got = _outcomes(iter_prepared(odd_folder, PRE, workers=workers))
    assert set(got) == set(EXPECTED)
    for source, (status, reason) in EXPECTED.items():
        assert got[source][0] == status, (source, got[source])
        if reason:
            assert reason in got[source][1], (source, got[source])
    json.dumps(got, ensure_ascii=False).encode("utf-8")  # every name fits in UTF-8 JSON


def test_following_links_reads_outside_files_and_walks_each_folder_once(odd_folder):
    got = _outcomes(iter_prepared(odd_folder, PRE, workers=0, decode=DecodeOptions(follow_links=True)))
    assert got["outside.dcm"] == ("ready", None)
    assert got["linked_folder/nested.dcm"] == ("ready", None) or got["sub/nested.dcm"] == ("ready", None)
    nested = [s for s in got if s.endswith("nested.dcm")]
    assert len(nested) == 1, nested  # sub and linked_folder are one folder: walked once, the loop back up ends


def test_a_file_that_vanishes_before_it_is_read(odd_folder):
    files = list(iter_input_files(odd_folder))
    (odd_folder / "good.dcm").unlink()
    read = read_file(next(p for p in files if p.name == "good.dcm"), odd_folder)
    assert read.outcome.status is Status.FAILED and read.outcome.reason == "file vanished before it could be read"


def test_an_unreadable_file_says_permission_denied(corpus, tmp_path):
    target = tmp_path / "secret.dcm"
    shutil.copyfile(corpus / SMALL, target)
    target.chmod(0)
    code = ("import sys; from operators.input.radiograph import read_file; "
            f"print(read_file({str(target)!r}).outcome.one_line())")
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        cmd = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
               "--bounding-set=-dac_override,-dac_read_search"] + cmd
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert "secret.dcm: failed (cannot read file: permission denied)" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Bombs: refused before any allocation

def _bomb(corpus: Path, tmp_path: Path, name: str, **attrs) -> Path:
    ds = fac.load(corpus / SMALL)
    for k, v in attrs.items():
        setattr(ds, k, v)
    return fac.save(ds, tmp_path / name)


def test_pixel_and_frame_bombs_are_refused_before_decoding(corpus, tmp_path):
    bombs = {
        "pixels": (_bomb(corpus, tmp_path, "pixels.dcm", Rows=60000, Columns=60000), "claims 60000 x 60000 pixels"),
        "frames": (_bomb(corpus, tmp_path, "frames.dcm", NumberOfFrames="10000"), "claims 10000 frames"),
        "bits": (_bomb(corpus, tmp_path, "bits.dcm", BitsAllocated=64), "Bits Allocated 64"),
    }
    code = ("import resource, sys; from operators.input.radiograph import read_file\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "for p in sys.argv[1:]: print(read_file(p).outcome.one_line())\n"
            "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    out = subprocess.run([sys.executable, "-c", code, *(str(p) for p, _ in bombs.values())], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for path, says in bombs.values():
        line = next(l for l in out.splitlines() if l.startswith(path.name))
        assert "failed" in line and says in line, line
    grew_mb = int(out.split("grew_kb")[1]) / 1024
    assert grew_mb < 200, f"reading three bombs grew the process by {grew_mb:.0f} MB"


def test_an_image_cut_off_before_its_pixels_is_failed_not_skipped(corpus, tmp_path):
    data = (corpus / SMALL).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: data.rfind(b"\xe0\x7f\x10\x00")])  # everything before the Pixel Data element
    outcome = read_file(cut).outcome
    assert outcome.status is Status.FAILED
    assert "no Pixel Data in a" in outcome.reason and "truncated or damaged" in outcome.reason


def test_a_decoder_panic_that_is_not_an_exception_is_the_files_reason(corpus, monkeypatch):
    """pyo3 turns a Rust panic (pylibjpeg-rle on a damaged stream, found by the fuzzer) into
    ``PanicException``, a BaseException: it must still become the file's reason."""
    from operators.input import radiograph

    class PanicException(BaseException):
        pass

    def panic(ds):
        raise PanicException("index out of bounds: the len is 6195200 but the index is 6195200")

    monkeypatch.setattr(radiograph, "decode_pixels", panic)
    outcome = read_file(corpus / "wg04_RG2_RLE.dcm", reduced_resolution=False).outcome
    assert outcome.status is Status.FAILED
    assert outcome.reason == "cannot decode: PanicException: index out of bounds: the len is 6195200 but the index is 6195200"
    monkeypatch.setattr(radiograph, "decode_pixels", lambda ds: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # a person's Ctrl-C is not a file's fault
        read_file(corpus / "wg04_RG2_RLE.dcm", reduced_resolution=False)


def test_a_damaged_data_element_is_named(corpus, tmp_path):
    data = fac.save(fac.load(corpus / "wg04_RG3_UNCR.dcm"), tmp_path / "ok.dcm").read_bytes()  # explicit VR little endian
    modality = b"\x08\x00\x60\x00CS"
    assert data.count(modality) == 1
    bad = tmp_path / "bad_vr.dcm"
    bad.write_bytes(data.replace(modality, b"\x08\x00\x60\x00XX"))
    outcome = read_file(bad).outcome
    assert outcome.status is Status.FAILED
    assert outcome.reason == "damaged data element: Unknown Value Representation 'XX' in tag (0008,0060)"


@pytest.mark.parametrize("slope, width, want", [
    ("1e300", "100", "failed: Rescale Slope 1e+300 and Intercept 0 give values out of range"),
    ("NaN", "100", "failed: Rescale Slope nan and Intercept 0 give values out of range"),
    ("1", "1e308", "none"), ("1", "NaN", "none"), ("1", "inf", "none"),  # no usable window: none applied
    ("1", "100", "window"),
])
def test_absurd_rescale_fails_and_absurd_windows_are_ignored(corpus, tmp_path, slope, width, want):
    ds = fac.load(corpus / "wg04_RG3_UNCR.dcm")
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter = slope, "0", "500"
    ds["WindowWidth"] = pydicom.DataElement(0x00281051, "DS", width.encode())  # as a damaged file holds it
    read = read_file(fac.save(ds, tmp_path / "x.dcm"))
    got = f"failed: {read.outcome.reason}" if read.outcome else read.radiographs[0].info.voi
    assert got == want


def test_a_code_stream_larger_than_its_header_is_refused(corpus):
    ds = pydicom.dcmread(corpus / "cr_hand_j2k.dcm")
    ds.Rows, ds.Columns = ds.Rows // 2, ds.Columns // 2  # the J2K stream still says full size
    with pytest.raises(Exception, match="code stream is .* pixels, the header says"):
        check_image_header(ds)
    ok = pydicom.dcmread(corpus / "cr_hand_j2k.dcm")
    check_image_header(ok)  # the real file passes
    with pytest.raises(Exception, match="over the limit"):
        check_image_header(ok, ImageLimits(max_pixels_per_frame=1000))


def test_every_corpus_file_passes_the_checks(corpus, corpus_labels):
    for name in corpus_labels:
        read = read_file(corpus / name)
        assert read.outcome is None, read.outcome.one_line()


# ---------------------------------------------------------------------------------------------
# Output folder faults (the app end to end)

def _app(inputs: Path, out: Path, package: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", "-i", str(inputs), "-o", str(out), "-m", str(package)], cwd=ROOT,
                          env={**os.environ, "BODYPART_WORKERS": "1", **env}, capture_output=True, text=True, timeout=600)


def _visible_dicom_files_are_whole(out: Path) -> int:
    n = 0
    for p in out.rglob("*"):
        assert not p.name.endswith(".tmp"), f"temporary file left: {p}"
        if p.suffix == ".dcm":
            ds = pydicom.dcmread(p)  # a half-written file fails here
            if "PixelData" in ds:
                ds.PixelData  # noqa: B018
            n += 1
    return n


def test_write_atomically_leaves_nothing_when_writing_fails(tmp_path):
    def half(fh):
        fh.write(b"DICM" * 100)
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "x.dcm", half)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_stops_the_run_with_one_clear_error_and_no_half_written_file(corpus, tiny_package, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = {"wg04_RG1_UNCR.dcm", "wg04_RG3_UNCR.dcm", SMALL, "dx_pelvis_ddh_10.dcm"}
    for name in names:
        shutil.copyfile(corpus / name, inputs / name)
    with tmpfs(tmp_path / "out", "4m") as out:
        st = os.statvfs(out)
        (out / "filler").write_bytes(bytes(st.f_bavail * st.f_frsize - 48 * 1024))  # leave 48 KB: full within the run
        (out / "filler").rename(out / ".filler")
        proc = _app(inputs, out, tiny_package, BODYPART_BATCH_SIZE="1")
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "No space left on device" in proc.stderr
        assert "Traceback" not in proc.stderr
        _visible_dicom_files_are_whole(out)
        results = out / "results.json"
        if results.exists():  # room was left for it
            doc = read_results(out)
            assert doc["complete"] is False and "No space left on device" in doc["interrupted_reason"]
        else:  # no room even for the summary: say so, and the streamed results keep what finished
            assert "results.json not written (No space left on device)" in proc.stderr
            lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]  # whole lines
            recorded = {r["source"] for r in lines if r["status"] == "classified"}
            assert recorded and recorded <= names  # what finished before the disk filled


def test_a_read_only_output_folder_fails_before_any_work(corpus, tiny_package, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(corpus / SMALL, inputs / SMALL)
    with tmpfs(tmp_path / "out", "1m", readonly=True) as out:
        proc = _app(inputs, out, tiny_package)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"output folder {out} is not writable: Read-only file system" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_two_runs_into_one_output_folder_do_not_interleave(corpus, tiny_package, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(corpus / SMALL, inputs / SMALL)
    out = tmp_path / "out"
    with OutputFolderLock(out):  # a run in progress (this process holds the lock)
        with pytest.raises(OutputFolderBusy, match="in use by another run"):
            OutputFolderLock(out).acquire()
        proc = _app(inputs, out, tiny_package)
        assert proc.returncode == 2
        assert "is in use by another run" in proc.stderr and f"'pid': {os.getpid()}" in proc.stderr.replace('"', "'")
        assert not (out / "results.jsonl").exists() and not (out / "results.json").exists()
    proc = _app(inputs, out, tiny_package)  # the lock went with its holder
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_results(out)["complete"] is True


def test_an_interrupted_run_says_it_is_not_complete(corpus, tiny_package, tmp_path):
    out = tmp_path / "out"
    proc = start_app_until_results(corpus, out, tiny_package, 2, BODYPART_WORKERS="1", BODYPART_BATCH_SIZE="1")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    doc = read_results(out)
    assert doc["complete"] is False and "interrupted" in doc["interrupted_reason"], doc["interrupted_reason"]
    assert 2 <= len(doc["instances"]) < 35
    assert proc.returncode != 0
    _visible_dicom_files_are_whole(out)
