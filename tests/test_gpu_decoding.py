"""GPU decoding with nvImageCodec: which files go to it, one shrink for both paths, clear failures.

The GPU-versus-CPU equality test needs a CUDA device and nvImageCodec: it runs on the GPU machine
(``benchmarks/gpu_session.sh`` runs this file there) and is skipped elsewhere; the rest runs here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.input.batching import DecodeOptions, iter_batches
from operators.input.gpu_decoding import GpuDecodeUnavailable, GpuDecoder, gpu_suitable
from operators.input.preprocessing import Preprocessing
from operators.input.dicom_header import read_dataset
from operators.input.grey import area_downsample, pool_to_side
from operators.input.radiograph import read_file, read_files


def _nvimgcodec_present() -> bool:
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_gpu_takes_jpeg_2000_and_jpeg_grey_and_leaves_the_rest_to_the_cpu(corpus):
    expect_gpu = ["wg04_RG2_J2KR.dcm", "wg04_RG1_J2KI.dcm", "cr_hand_j2k.dcm", "wg04_RG3_JPLL.dcm", "dx_pelvis_ddh_1.dcm"]
    expect_cpu = {
        "wg04_RG2_JLSL.dcm": "transfer syntax",  # JPEG-LS: no GPU decoder
        "wg04_RG2_RLE.dcm": "transfer syntax",
        "wg04_RG1_UNCI.dcm": "transfer syntax",  # nothing to decode
        "cr_dental_pano_modlut.dcm": "Modality LUT",  # a table needs full-resolution values
    }
    for name in expect_gpu:
        ds, _ = read_dataset(corpus / name)
        assert gpu_suitable(ds) is None, name
    for name, why in expect_cpu.items():
        ds, _ = read_dataset(corpus / name)
        assert why in gpu_suitable(ds), name
    ds, _ = read_dataset(corpus / "wg04_RG2_J2KR.dcm")
    ds.PixelRepresentation = 1
    assert gpu_suitable(ds) == "signed pixel values"


def test_one_shrink_for_both_paths_matches_a_block_mean():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4096, size=(1031, 777)).astype(np.float32)
    f = 3  # ceil(1031 / 400)
    r, c = 1031 // f * f, 777 // f * f
    expected = img[:r, :c].reshape(r // f, f, c // f, f).mean(axis=(1, 3))
    np.testing.assert_allclose(area_downsample(img, 400), expected, rtol=1e-6)
    np.testing.assert_allclose(pool_to_side(torch.from_numpy(img), 400).numpy(), expected, rtol=1e-6)
    rgb = np.stack([img, img / 2, img / 4], axis=-1)  # colour: each sample pooled alike
    np.testing.assert_allclose(pool_to_side(torch.from_numpy(rgb), 400).numpy()[..., 1], expected / 2, rtol=1e-6)
    assert pool_to_side(torch.from_numpy(img), 2000).shape == img.shape  # small enough: untouched


@pytest.mark.skipif(_nvimgcodec_present(), reason="this machine has CUDA and nvImageCodec")
def test_unavailable_gpu_decoding_is_silent_in_auto_and_clear_when_required(corpus):
    assert GpuDecoder.create("auto") is None
    assert GpuDecoder.create("off") is None
    with pytest.raises(GpuDecodeUnavailable, match="GPU decoding requested but unavailable: "):
        GpuDecoder.create("on")
    with pytest.raises(ValueError, match="auto, on, off"):
        GpuDecoder.create("fast")
    pre = Preprocessing(size=64)
    with pytest.raises(GpuDecodeUnavailable):
        next(iter_batches(corpus, pre, 4, workers=2, decode=DecodeOptions(gpu="on")))
    with pytest.raises(ValueError, match="not 'yes'"):
        DecodeOptions(gpu="yes")
    # auto without a GPU reads exactly as before
    batches = list(iter_batches(corpus, pre, 8, workers=2, decode=DecodeOptions(gpu="auto")))
    assert sum(len(b.radiographs) for b in batches) >= 35
    assert not any("GPU" in r.info.decoder for b in batches for r in b.radiographs)


@pytest.mark.skipif(not _nvimgcodec_present(), reason="needs a CUDA device and nvImageCodec (GPU machine)")
def test_gpu_decoded_images_match_the_cpu_decoders(corpus):
    gpu = GpuDecoder.create("on")
    used = 0
    for path in sorted(corpus.glob("*.dcm")):
        cpu_read = read_file(path, corpus, reduced_resolution=False)
        gpu_read = read_file(path, corpus, gpu=gpu, reduced_resolution=False)
        assert [r.image.shape for r in cpu_read.radiographs] == [r.image.shape for r in gpu_read.radiographs], path.name
        for a, b in zip(cpu_read.radiographs, gpu_read.radiographs):
            if "GPU" in b.info.decoder:
                used += 1
                # Lossless: the same stored values; lossy: decoders differ by rounding only.
                assert np.abs(a.image - b.image).max() < 0.02, (path.name, b.info.decoder)
                assert np.abs(a.image - b.image).mean() < 0.002, (path.name, b.info.decoder)
    assert used >= 15  # every JPEG 2000 and JPEG lossless radiograph of the corpus


# ---------------------------------------------------------------------------------------------
# Batched GPU decoding, with nvImageCodec's decoder replaced by one that hands back the CPU
# decoders' frames: the batching, splitting and fallback logic runs here; the GPU machine runs
# the real decoder (test above).


class CpuBackedDecoder:
    """nvimgcodec.Decoder's ``decode(streams, params)`` over known frames; records each call."""

    def __init__(self, datasets, refuse: bytes | None = None, fail: bool = False):
        from pydicom.encaps import generate_frames

        from operators.input.decoding import decode_pixels

        self.frames, self.calls, self.refuse, self.fail = {}, [], refuse, fail
        for ds in datasets:
            n = int(ds.get("NumberOfFrames", 1) or 1)
            if ds.file_meta.TransferSyntaxUID.is_encapsulated:
                for stream, frame in zip(generate_frames(ds.PixelData, number_of_frames=n), decode_pixels(ds).frames):
                    self.frames[bytes(stream)] = frame if frame.ndim == 3 else frame[..., None]  # HWC, as nvImageCodec

    def decode(self, streams, params=None):
        self.calls.append((params, len(streams)))
        if self.fail:
            raise RuntimeError("device lost")
        return [None if bytes(s) == self.refuse else np.ascontiguousarray(self.frames[bytes(s)]).copy() for s in streams]


def _gpu(decoder) -> GpuDecoder:
    return GpuDecoder(decoder, "grey", "colour", torch.device("cpu"))


@pytest.fixture(scope="module")
def gpu_inputs(corpus, tmp_path_factory):
    from pydicom.encaps import encapsulate, generate_frames

    from operators.testing import dicom_factory as fac

    names = ["wg04_RG2_J2KR.dcm", "wg04_RG3_JPLL.dcm", "dx_pelvis_ddh_1.dcm", "wg04_RG2_JLSL.dcm", "cr_hand_j2k.dcm"]
    paths = [corpus / n for n in names]
    ds = fac.load(corpus / "wg04_RG3_J2KR.dcm")  # and a two-frame file
    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame, frame])
    ds.NumberOfFrames = 2
    paths.append(fac.save(ds, tmp_path_factory.mktemp("gpu") / "two_frames_j2k.dcm"))
    return paths


def test_decode_many_batches_by_colour_and_splits_frames_back(gpu_inputs):
    datasets = [read_dataset(p)[0] for p in gpu_inputs]
    fake = CpuBackedDecoder(datasets)
    out = _gpu(fake).decode_many(datasets, 1024)
    assert sorted(fake.calls) == [("colour", 1), ("grey", 5)]  # one call per kind; 2 frames for the last file
    assert out[3] is None  # JPEG-LS: the CPU decoders' job
    for ds, d in zip(datasets, out):
        if d is None:
            continue
        assert d.decoder.startswith("nvImageCodec GPU")
        cpu = [pool_to_side(torch.from_numpy(f.astype(np.float32)), 1024).numpy() for f in CpuBackedDecoder([ds]).frames.values()]
        assert len(d.frames) == int(ds.get("NumberOfFrames", 1) or 1)
        np.testing.assert_allclose(d.frames[0].squeeze(), cpu[0].squeeze(), rtol=1e-6)


def test_a_refused_stream_or_a_failed_call_falls_back_to_the_cpu(gpu_inputs):
    datasets = [read_dataset(p)[0] for p in gpu_inputs]
    refused = next(iter(CpuBackedDecoder(datasets[:1]).frames))
    out = _gpu(CpuBackedDecoder(datasets, refuse=refused)).decode_many(datasets, 1024)
    assert out[0] is None and out[1] is not None and out[5] is not None  # only the refused file
    assert _gpu(CpuBackedDecoder(datasets, fail=True)).decode_many(datasets, 1024) == [None] * len(datasets)


def test_files_read_in_one_gpu_batch_equal_the_cpu_path(gpu_inputs, corpus):
    fake = CpuBackedDecoder([read_dataset(p)[0] for p in gpu_inputs])
    batched = read_files(gpu_inputs, corpus, gpu=_gpu(fake), reduced_resolution=False)
    assert len(fake.calls) == 2
    for path, got in zip(gpu_inputs, batched):
        want = read_file(path, corpus, reduced_resolution=False)
        assert [r.frame for r in got.radiographs] == [r.frame for r in want.radiographs], path.name
        for a, b in zip(want.radiographs, got.radiographs):
            assert ("GPU" in b.info.decoder) == (path.name != "wg04_RG2_JLSL.dcm")
            np.testing.assert_allclose(a.image, b.image, atol=1e-5)


@pytest.mark.slow  # starts a pool of worker processes
def test_readers_take_several_files_per_gpu_call_in_order(gpu_inputs, corpus, monkeypatch, tmp_path):
    """In process: chunks of GPU_FILES_PER_CALL through one fake GPU; in reader processes (no GPU
    there, so the CPU decodes each chunk): the same items in the same order as file by file."""
    import os

    from operators.input import batching

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        for p in gpu_inputs:
            os.symlink(p, folder / f"{i}_{p.name}")
    pre = Preprocessing(size=64)
    plain = list(batching.iter_prepared(folder, pre, workers=0, decode=DecodeOptions(reduced_resolution=False, follow_links=True)))
    fake = CpuBackedDecoder([read_dataset(p)[0] for p in gpu_inputs])
    monkeypatch.setattr(batching.GpuDecoder, "create", classmethod(lambda cls, mode="auto", device="cuda": _gpu(fake)))
    batched = list(batching.iter_prepared(folder, pre, workers=0, decode=DecodeOptions(gpu="auto", reduced_resolution=False, follow_links=True)))
    files_per_call = [n for _, n in fake.calls]
    assert max(files_per_call) > 1 and len(fake.calls) <= 2 * -(-18 // batching.GPU_FILES_PER_CALL)
    monkeypatch.setattr(batching, "resolve_mode", lambda mode: "auto")  # chunked readers; no GPU in them
    pooled = list(batching.iter_prepared(folder, pre, workers=2, decode=DecodeOptions(gpu="auto", reduced_resolution=False, follow_links=True)))
    for other in (batched, pooled):
        assert [i.source for i, _ in other] == [i.source for i, _ in plain]
        for (_, a), (_, b) in zip(plain, other):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-5))


def test_gpu_decoding_runs_on_the_networks_cuda_device(corpus, monkeypatch):
    """``BODYPART_DEVICE=cuda:1`` puts the readers' GPU decoders on cuda:1, not the default device."""
    from app.settings import Settings, SettingsError
    from operators.input import batching

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr("operators.input.gpu_decoding.unavailable_reason", lambda: None)
    settings = Settings.from_env({"BODYPART_DEVICE": "cuda:1", "BODYPART_GPU_DECODE": "auto"})
    assert settings.decode.gpu_device == "cuda:1"
    assert Settings.from_env({"BODYPART_DEVICE": "cuda", "BODYPART_GPU_DECODE": "auto"}).decode.gpu_device == "cuda"
    asked = []
    monkeypatch.setattr(batching.GpuDecoder, "create", classmethod(lambda cls, mode="auto", device="cuda": asked.append(device)))
    next(batching.iter_prepared(corpus, Preprocessing(size=64), workers=0, decode=settings.decode))
    assert asked == ["cuda:1"]

    class Started(Exception):
        pass

    def pool(*args, initializer, initargs, **kwargs):  # each reader process runs initializer(*initargs) first
        assert initializer is batching._reader_init
        asked.append(initargs[1])
        raise Started

    monkeypatch.setattr(batching, "ReaderPool", pool)
    with pytest.raises(Started):
        next(batching.iter_prepared(corpus, Preprocessing(size=64), workers=2, decode=settings.decode))
    assert asked == ["cuda:1", "cuda:1"]
    with pytest.raises(ValueError, match="cuda or cuda:N"):
        DecodeOptions(gpu_device="cpu")
    with pytest.raises(SettingsError, match=r"BODYPART_DEVICE='cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        Settings.from_env({"BODYPART_DEVICE": "cuda:2"})
