"""GPU decoding with nvImageCodec: which files go to it, one shrink for both paths, clear failures.

The GPU-versus-CPU equality test needs a CUDA device and nvImageCodec: it runs on the GPU machine
(``benchmarks/gpu_session.sh`` runs this file there) and is skipped elsewhere; the rest runs here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.batching import DecodeOptions, iter_batches
from operators.gpu_decoding import GpuDecodeUnavailable, GpuDecoder, gpu_suitable
from operators.preprocessing import Preprocessing
from operators.radiograph import area_downsample, pool_to_side, read_dataset, read_file


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
