"""The radiograph input stage on the real corpus and on twins made from it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydicom.encaps import encapsulate, generate_frames

from operators.outcome import Status
from operators.input.radiograph import Radiograph, iter_radiographs, read_file
from operators.testing import dicom_factory as fac


def _image(path: Path, **kw) -> np.ndarray:
    """The grey image as the full-resolution decoders give it (reduced-resolution JPEG 2000 has its own tests)."""
    read = read_file(path, **{"reduced_resolution": False, **kw})
    assert read.outcome is None, read.outcome.one_line()
    assert len(read.radiographs) == 1
    return read.radiographs[0].image


def _info(path: Path):
    return read_file(path).radiographs[0].info


# ---------------------------------------------------------------------------------------------
# Every real file


def test_every_corpus_file_reads_into_a_plausible_image(corpus, corpus_labels):
    assert len(corpus_labels) == 35
    for name in corpus_labels:
        read = read_file(corpus / name)
        assert read.outcome is None, read.outcome.one_line()
        (r,) = read.radiographs
        img = r.image
        assert img.dtype == np.float32 and img.ndim == 2
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert max(img.shape) <= 1024 and min(img.shape) >= 200, (name, img.shape)
        assert img.std() > 0.1, f"{name}: nearly flat image"
        assert r.sop_instance_uid and r.study_instance_uid


def test_chests_show_bone_bright(corpus, corpus_labels):
    """Mediastinum/spine brighter than the lungs on every chest, MONOCHROME1 and raw ones included."""
    chests = [n for n, labels in corpus_labels.items() if labels == ["Chest"]]
    assert len(chests) >= 6
    for name in chests:
        img = _image(corpus / name)
        h, w = img.shape
        band = img[int(0.35 * h) : int(0.65 * h)]
        mediastinum = band[:, int(0.45 * w) : int(0.55 * w)].mean()
        lungs = (band[:, int(0.2 * w) : int(0.35 * w)].mean() + band[:, int(0.65 * w) : int(0.8 * w)].mean()) / 2
        assert mediastinum > lungs + 0.15, f"{name}: mediastinum {mediastinum:.2f} vs lungs {lungs:.2f}"


def test_raw_detector_image_is_inverted_and_says_why(corpus):
    info = _info(corpus / "dx_chest_raw_j2k.dcm")
    assert info.inverted
    assert info.voi.startswith("none (window does not fit")


@pytest.mark.parametrize("series", ["RG2", "RG3"])
def test_lossless_encodings_give_identical_images(corpus, series):
    names = ["J2KR", "JLSL", "JPLL", "RLE"] + (["UNCR"] if series == "RG3" else [])
    images = {n: _image(corpus / f"wg04_{series}_{n}.dcm") for n in names}
    ref = images[names[0]]
    for n, img in images.items():
        np.testing.assert_array_equal(img, ref, err_msg=f"{series} {n}")


@pytest.mark.parametrize("series,lossy", [("RG1", "J2KI"), ("RG1", "JLSN"), ("RG2", "J2KI"), ("RG2", "JLSN"),
                                           ("RG2", "JPLY"), ("RG3", "J2KI"), ("RG3", "JLSN"), ("RG3", "JPLY")])
def test_lossy_encodings_stay_close_to_lossless(corpus, series, lossy):
    ref = _image(corpus / f"wg04_{series}_{'UNCR' if series != 'RG2' else 'JPLL'}.dcm")
    img = _image(corpus / f"wg04_{series}_{lossy}.dcm")
    assert np.abs(img - ref).mean() < 0.01


@pytest.mark.parametrize("name,decoder", [
    ("wg04_RG2_JLSL", "pyjpegls"), ("wg04_RG3_JLSL", "pyjpegls"), ("wg04_RG1_JLSN", "pyjpegls"),
    ("wg04_RG2_JLSN", "pyjpegls"), ("wg04_RG3_JLSN", "pyjpegls"),
    ("wg04_RG2_JPLL", "libjpeg-turbo (JPEG lossless)"), ("wg04_RG3_JPLL", "libjpeg-turbo (JPEG lossless)"),
    ("cr_dental_pano_modlut", "libjpeg-turbo (JPEG lossless)"),
])
def test_faster_decoders_give_the_values_of_pydicoms_default(corpus, name, decoder):
    """CharLS (pyjpegls) for JPEG-LS, libjpeg-turbo for JPEG lossless: the values pydicom's
    default plugin (GDCM) gives, bit for bit. (Which is faster is measured per machine by
    ``benchmarks/decoders.py``, not asserted here.)"""
    import pydicom

    from operators.input.decoding import decode_pixels

    reference = pydicom.dcmread(corpus / f"{name}.dcm").pixel_array
    decoded = decode_pixels(pydicom.dcmread(corpus / f"{name}.dcm"))
    assert decoder in decoded.decoder and not decoded.lenient
    np.testing.assert_array_equal(decoded.frames[0], reference)


def _full_and_reduced(paths: dict[str, Path], decoder_says: str) -> list[float]:
    """Read each file at full and at reduced resolution; check that reduced names its decoder and
    hardly changes the 224 px model input, and that the shipped model gives the same labels.
    Returns every probability's change. (The speed-up is measured in ``benchmarks/decoders.py``.)"""
    import torch

    from operators.model.ensemble import Ensemble
    from operators.model.model_package import load_package
    from tests.conftest import ROOT

    package = load_package(ROOT / "app/models/default")
    pre = package.preprocessing
    inputs = {"full": [], "reduced": []}
    for name, path in paths.items():
        (full,) = read_file(path, max_side=pre.max_side, reduced_resolution=False).radiographs
        (reduced,) = read_file(path, max_side=pre.max_side).radiographs
        assert decoder_says in reduced.info.decoder, (name, reduced.info.decoder)
        assert "resolution" not in full.info.decoder and "scale" not in full.info.decoder, name
        assert reduced.info.original_shape == full.info.original_shape
        assert max(reduced.image.shape) >= pre.size * 2  # still well above the model's input size
        a, b = pre.square(full.image), pre.square(reduced.image)
        assert (a - b).abs().mean() < 0.01 and (a - b).abs().max() < 0.25, name
        inputs["full"].append(a)
        inputs["reduced"].append(b)
    ens = Ensemble(package, device="cpu")
    full_p, reduced_p = (ens.predict(pre.normalise(torch.stack(inputs[k]))) for k in ("full", "reduced"))
    diffs = []
    for name, f, r in zip(paths, full_p, reduced_p):
        assert f.labels == r.labels, name
        diffs += [abs(f.probabilities[c] - r.probabilities[c]) for c in f.probabilities]
    return diffs


def test_reduced_resolution_jpeg2000_gives_the_model_the_same_picture(corpus):
    """Large grey JPEG 2000 decoded at half resolution: the 224 px model input barely changes."""
    names = ["wg04_RG2_J2KR", "wg04_RG3_J2KR", "wg04_RG1_J2KI", "wg04_RG2_J2KI", "wg04_RG3_J2KI", "cr_hand_j2k", "dx_chest_pa_j2k"]
    diffs = _full_and_reduced({n: corpus / f"{n}.dcm" for n in names}, "1/2 resolution")
    assert max(diffs) < 0.1
    # OpenJPEG refuses a reduced decode of this raw 16-bit code stream: the full decoders take it
    raw = read_file(corpus / "dx_chest_raw_j2k.dcm").radiographs[0]
    assert "resolution" not in raw.info.decoder and raw.info.inverted
    # small images, colour and JPEG-LS are never reduced
    for name in ("dx_pelvis_ddh_1.dcm", "wg04_RG2_JLSL.dcm"):
        assert "resolution" not in read_file(corpus / name).radiographs[0].info.decoder


@pytest.fixture(scope="module")
def jpeg_twins(corpus, tmp_path_factory):
    """8-bit JPEG baseline twins of large corpus images (the corpus has no such file)."""
    out = tmp_path_factory.mktemp("jpeg")
    names = ["wg04_RG1_UNCR", "wg04_RG3_UNCR", "wg04_RG2_JPLL", "dx_chest_pa_j2k", "cr_hand_j2k"]
    return {n: fac.save(fac.as_jpeg_baseline(fac.load(corpus / f"{n}.dcm"), _image(corpus / f"{n}.dcm", max_side=None)),
                        out / f"{n}_jpeg.dcm") for n in names}


def test_reduced_resolution_jpeg_gives_the_model_the_same_picture(jpeg_twins):
    """8-bit lossy JPEG decoded with DCT scaling: same model input, same labels."""
    diffs = _full_and_reduced(jpeg_twins, "JPEG at 1/2 scale")
    # The model is undecided on the hand (Feet 0.35-0.50, no label) and moves 0.15 there with the
    # intermediate size (833 vs 625 px before the 224 px resize); elsewhere it barely moves.
    assert max(diffs) < 0.2 and np.mean(diffs) < 0.01


def test_reduced_jpeg_frames_and_what_is_never_reduced(jpeg_twins, corpus, tmp_path):
    ds = fac.load(jpeg_twins["wg04_RG1_UNCR"])  # odd rows: libjpeg rounds the scaled size up
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame, frame])
    ds.NumberOfFrames = 2
    read = read_file(fac.save(ds, tmp_path / "mf_jpeg.dcm"))
    assert [r.frame for r in read.radiographs] == [0, 1]
    assert all("1/2 scale" in r.info.decoder for r in read.radiographs)
    np.testing.assert_array_equal(read.radiographs[1].image, read_file(jpeg_twins["wg04_RG1_UNCR"]).radiographs[0].image)
    # 12-bit JPEG (Pillow cannot scale it) and images already small keep the full decoders
    assert "scale" not in _info(corpus / "wg04_RG2_JPLY.dcm").decoder
    small = fac.as_jpeg_baseline(fac.load(corpus / "dx_pelvis_ddh_1.dcm"), _image(corpus / "dx_pelvis_ddh_1.dcm"))
    assert "scale" not in _info(fac.save(small, tmp_path / "small_jpeg.dcm")).decoder


def test_12bit_jpeg_with_bad_scan_parameters_uses_lenient_decoder(corpus):
    for name in ("wg04_RG2_JPLY.dcm", "wg04_RG3_JPLY.dcm"):
        info = _info(corpus / name)
        assert info.lenient_decoder and "lenient" in info.decoder
    assert not _info(corpus / "wg04_RG2_JPLL.dcm").lenient_decoder


def test_files_without_file_meta_and_rgb(corpus):
    assert _info(corpus / "cr_chest_mono1_nometa.dcm").file_meta_missing
    assert _info(corpus / "dx_spine_lateral_nometa.dcm").file_meta_missing
    info = _info(corpus / "dx_pelvis_ddh_1.dcm")
    assert info.photometric_interpretation.startswith(("RGB", "YBR")) and not info.inverted


def test_modality_lut_sequence_is_applied(corpus):
    info = _info(corpus / "cr_dental_pano_modlut.dcm")
    assert info.inverted  # MONOCHROME1


# ---------------------------------------------------------------------------------------------
# Twins: the same picture written differently must give the same normalised image


@pytest.fixture(scope="module")
def leg(corpus):
    """RG3 uncompressed: MONOCHROME1, 10-bit, window 550/1024."""
    return fac.load(corpus / "wg04_RG3_UNCR.dcm")


def test_monochrome1_and_monochrome2_twin_agree(leg, tmp_path):
    top = 2 ** int(leg.BitsStored) - 1
    arr = leg.pixel_array
    twin = fac.with_pixels(leg, (top - arr).astype(np.uint16), PhotometricInterpretation="MONOCHROME2",
                           WindowCenter=top - float(leg.WindowCenter))
    a = _image(fac.save(leg, tmp_path / "m1.dcm"))
    b = _image(fac.save(twin, tmp_path / "m2"))
    assert np.abs(a - b).max() < 0.01


def test_presentation_lut_inverse_matches_monochrome1(leg, tmp_path):
    top = 2 ** int(leg.BitsStored) - 1
    twin = fac.with_pixels(leg, leg.pixel_array, PhotometricInterpretation="MONOCHROME2", PresentationLUTShape="INVERSE")
    plain = fac.with_pixels(leg, leg.pixel_array, PhotometricInterpretation="MONOCHROME2")
    a = _image(fac.save(leg, tmp_path / "m1.dcm"))
    b = _image(fac.save(twin, tmp_path / "inv.dcm"))
    c = _image(fac.save(plain, tmp_path / "plain.dcm"))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.corrcoef(a.ravel(), c.ravel())[0, 1] < -0.9  # without INVERSE it is the negative
    assert top > 0


def test_window_covering_the_data_equals_no_window(corpus, tmp_path):
    ds = fac.load(corpus / "wg04_RG2_JPLL.dcm")  # MONOCHROME2, 10-bit, window 511/1024 = full range
    arr = ds.pixel_array
    windowed = fac.with_pixels(ds, arr, WindowCenter=float(arr.min() + arr.max()) / 2 + 0.5, WindowWidth=float(arr.max() - arr.min()) + 1)
    unwindowed = fac.with_pixels(ds, arr, WindowCenter=None, WindowWidth=None)
    a = _image(fac.save(windowed, tmp_path / "w.dcm"))
    b = _image(fac.save(unwindowed, tmp_path / "nw.dcm"))
    assert _info(tmp_path / "w.dcm").voi == "window" and _info(tmp_path / "nw.dcm").voi == "none"
    assert np.abs(a - b).max() < 0.01


def test_rescale_and_signed_pixels_with_matching_window(leg, tmp_path):
    arr = leg.pixel_array.astype(np.int32)
    c, w = float(leg.WindowCenter), float(leg.WindowWidth)
    rescaled = fac.with_pixels(leg, arr.astype(np.uint16), RescaleSlope=2, RescaleIntercept=-100,
                               WindowCenter=2 * c - 100, WindowWidth=2 * w)
    signed = fac.with_pixels(leg, (arr - 512).astype(np.int16), WindowCenter=c - 512, BitsStored=16, HighBit=15)
    ref = _image(fac.save(leg, tmp_path / "ref.dcm"))
    assert np.abs(_image(fac.save(rescaled, tmp_path / "r.dcm")) - ref).max() < 0.01
    assert np.abs(_image(fac.save(signed, tmp_path / "s.dcm")) - ref).max() < 0.01


def test_voi_lut_sequence_is_used_before_window(leg, tmp_path):
    """A VOI LUT that inverts the window's ramp must win over the window and flip the image."""
    c, w = float(leg.WindowCenter), float(leg.WindowWidth)
    first = 0
    x = np.arange(1024, dtype=np.float64)
    ramp = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    item = fac.pydicom.Dataset()
    item.LUTDescriptor = [1024, first, 16]
    item.LUTData = (np.rint((1 - ramp) * 65535)).astype(np.uint16).tolist()
    item["LUTData"].VR = "US"
    twin = fac.with_pixels(leg, leg.pixel_array, VOILUTSequence=fac.pydicom.Sequence([item]))
    a = _image(fac.save(leg, tmp_path / "ref.dcm"))
    b = _image(fac.save(twin, tmp_path / "lut.dcm"))
    assert _info(tmp_path / "lut.dcm").voi == "lut"
    assert np.abs((1 - a) - b).max() < 0.02


def test_eight_bit_twin(leg, tmp_path):
    arr = (leg.pixel_array >> 2).astype(np.uint8)
    twin = fac.with_pixels(leg, arr, BitsStored=8, HighBit=7, WindowCenter=None, WindowWidth=None)
    ref = fac.with_pixels(leg, leg.pixel_array, WindowCenter=None, WindowWidth=None)
    a = _image(fac.save(ref, tmp_path / "ref.dcm"))
    b = _image(fac.save(twin, tmp_path / "8.dcm"))
    assert np.abs(a - b).mean() < 0.01


def test_multiframe_gives_one_image_per_frame(leg, tmp_path):
    arr = leg.pixel_array
    frames = np.stack([arr, arr[::-1]])
    path = fac.save(fac.with_pixels(leg, frames), tmp_path / "mf.dcm")
    read = read_file(path)
    assert [r.frame for r in read.radiographs] == [0, 1]
    np.testing.assert_allclose(read.radiographs[1].image, read.radiographs[0].image[::-1], atol=1e-6)


def test_multiframe_jpeg2000_is_reduced_frame_by_frame(corpus, tmp_path):
    src = corpus / "wg04_RG3_J2KR.dcm"
    ds = fac.load(src)
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame, frame])
    ds.NumberOfFrames = 2
    path = fac.save(ds, tmp_path / "mf_j2k.dcm")
    read = read_file(path)
    assert [r.frame for r in read.radiographs] == [0, 1]
    assert all("1/2 resolution" in r.info.decoder for r in read.radiographs)
    np.testing.assert_array_equal(read.radiographs[0].image, read.radiographs[1].image)
    np.testing.assert_array_equal(read.radiographs[0].image, read_file(src).radiographs[0].image)


def test_huge_image_is_downsampled_early(tmp_path):
    ds = fac.minimal(rows=6000, cols=5000)
    img = _image(fac.save(ds, tmp_path / "huge.dcm"))
    assert max(img.shape) <= 1024
    assert read_file(tmp_path / "huge.dcm").radiographs[0].info.original_shape == (6000, 5000)
    big = _image(tmp_path / "huge.dcm", max_side=None)
    assert big.shape == (6000, 5000)


# ---------------------------------------------------------------------------------------------
# Bad and non-radiograph inputs: a clear reason each, and the run goes on


def _bad_inputs(folder: Path, corpus: Path) -> dict[str, str]:
    """Write bad inputs into ``folder``; return name -> expected fragment of the reason."""
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("this is not DICOM\n" * 20)
    (folder / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    good = (corpus / "wg04_RG3_UNCR.dcm").read_bytes()
    (folder / "truncated_header.dcm").write_bytes(good[:300])
    (folder / "truncated_pixels.dcm").write_bytes(good[: len(good) // 2])
    j2k = fac.load(corpus / "cr_hand_j2k.dcm")
    (frame,) = generate_frames(j2k.PixelData, number_of_frames=1)
    j2k.PixelData = encapsulate([frame[:200] + b"\xff\x00" * 4000])  # damaged codestream, intact file
    fac.save(j2k, folder / "corrupt_j2k.dcm")
    fac.save(fac.minimal("CT"), folder / "ct")
    fac.save(fac.minimal("DX", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), folder / "scout.dcm")
    sr = fac.minimal("SR")
    del sr.PixelData
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    fac.save(sr, folder / "report.dcm")
    nomod = fac.minimal("DX")
    del nomod.Modality
    fac.save(nomod, folder / "nomodality.dcm")
    fac.save(fac.minimal("DX", PhotometricInterpretation="PALETTE COLOR"), folder / "palette.dcm")
    flat = fac.minimal("DX")
    flat.PixelData = np.full((64, 48), 7, np.uint16).tobytes()
    fac.save(flat, folder / "blank.dcm")
    return {
        "empty.dcm": "failed:empty file (0 bytes)",
        "notes.txt": "failed:not a DICOM file",
        "random.bin": "failed:not a DICOM file",
        "truncated_header.dcm": "failed:",
        "truncated_pixels.dcm": "failed:",
        "corrupt_j2k.dcm": "failed:JPEG 2000",
        "ct": "skipped:modality CT",
        "scout.dcm": "skipped:localizer",
        "report.dcm": "skipped:non-image object",
        "nomodality.dcm": "skipped:no Modality",
        "palette.dcm": "failed:unsupported Photometric Interpretation PALETTE COLOR",
        "blank.dcm": "failed:blank image",
    }


def test_bad_inputs_each_get_a_reason_and_the_run_goes_on(corpus, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    expected = _bad_inputs(folder, corpus)
    # good files between the bad ones, one without .dcm, one in a subfolder, one DX-like modality
    (folder / "a_good").write_bytes((corpus / "cr_chest_mono1_nometa.dcm").read_bytes())
    (folder / "sub" / "z_good.dcm").write_bytes((corpus / "wg04_RG2_RLE.dcm").read_bytes())
    fac.save(fac.minimal("MG"), folder / "mammo.dcm")
    (folder / ".DS_Store").write_bytes(b"\0" * 10)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}

    results = list(iter_radiographs(folder))

    by_source = {r.source: r for r in results}
    assert set(by_source) == set(expected) | {"a_good", "sub/z_good.dcm", "mammo.dcm"}
    for name, want in expected.items():
        status, fragment = want.split(":", 1)
        outcome = by_source[name]
        assert not isinstance(outcome, Radiograph), name
        assert outcome.status == Status(status), outcome.one_line()
        assert fragment in (outcome.reason or ""), outcome.one_line()
        assert name in outcome.one_line()
    assert isinstance(by_source["a_good"], Radiograph)
    assert isinstance(by_source["sub/z_good.dcm"], Radiograph)
    assert by_source["mammo.dcm"].info.dx_like
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
    assert before == after, "sources must never be written"


def test_header_less_file_with_compressed_pixels_is_refused_clearly(corpus, tmp_path):
    ds = fac.load(corpus / "cr_hand_j2k.dcm")
    path = fac.save_without_meta(ds, tmp_path / "nometa_j2k", implicit_vr=False)
    outcome = read_file(path).outcome
    assert outcome is not None and outcome.status is Status.FAILED
    assert "transfer syntax" in outcome.reason


def test_without_the_faster_decoders_pydicoms_plugins_decode(corpus, monkeypatch):
    """Images without imagecodecs or pyjpegls (the GPU machine's, for one) fall back to GDCM."""
    import sys

    from operators.input import decoding

    want = {n: _image(corpus / f"{n}.dcm") for n in ("wg04_RG3_JPLL", "wg04_RG3_JLSL")}
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import fails
    monkeypatch.setattr(decoding, "PREFERRED_PLUGINS", {k: "not-installed" for k in decoding.PREFERRED_PLUGINS})
    for name, image in want.items():
        info = _info(corpus / f"{name}.dcm")
        assert "libjpeg-turbo" not in info.decoder and "pyjpegls" not in info.decoder, info.decoder
        np.testing.assert_array_equal(_image(corpus / f"{name}.dcm"), image)
