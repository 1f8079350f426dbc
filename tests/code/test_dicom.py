"""DICOM input through THE preprocessing (cxr.imaging.preprocess.preprocess_bytes -> cxr.imaging.dicom): the same
model input as a PNG of the same pixels, radiology's display pipeline (rescale, VOI window or
LUT, MONOCHROME1), and hostile headers refused before a pixel is decoded, naming no patient data."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes
from cxr.imaging.primitives import ImageError, sixteen_bit_to_8bit
from cxr.serve.decoding import RequestError, decode
from tests.dicom_files import PATIENT_MARKERS, dataset, dicom, png, refused_variants, xray8, xray16

CFG = ImagingConfig(image_size=64, intensity="equalize")
SYNTAXES = [None, RLELossless, JPEG2000Lossless]  # None: Explicit VR Little Endian


def display(data: bytes) -> np.ndarray:
    """What cxr.imaging.dicom hands to the PNG path: the decoded 8-bit gray image."""
    from cxr.imaging.preprocess import open_image

    return np.asarray(open_image(data).decode())


@pytest.mark.parametrize("ts", SYNTAXES, ids=["native", "rle", "j2k"])
def test_8_bit_monochrome2_is_byte_identical_to_the_png(ts):
    x = xray8()
    assert np.array_equal(display(dicom(x, ts)), x)
    assert np.array_equal(preprocess_bytes(dicom(x, ts), CFG), preprocess_bytes(png(x), CFG))


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("ts", SYNTAXES, ids=["native", "rle", "j2k"])
def test_16_bit_without_a_window_is_identical_to_the_16_bit_png(ts, bits):
    x = xray16(bits)
    assert np.array_equal(preprocess_bytes(dicom(x, ts, bits_stored=bits), CFG), preprocess_bytes(png(x), CFG))


def test_monochrome1_is_inverted():
    x8, x16 = xray8(), xray16(12)
    # 8 bit: 255 - (255 - x) is x exactly
    assert np.array_equal(preprocess_bytes(dicom(255 - x8, photometric="MONOCHROME1"), CFG),
                          preprocess_bytes(png(x8), CFG))
    # 12 bits stored: inverted within them before the window, so exactly the PNG of the shown pixels
    got = display(dicom(4095 - x16, photometric="MONOCHROME1", bits_stored=12))
    assert np.array_equal(got, sixteen_bit_to_8bit(x16))


def linear_window(values: np.ndarray, center: float, width: float, lo=0.0, hi=255.0) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written out independently of pydicom."""
    c, w = center - 0.5, width - 1
    y = np.where(values <= c - w / 2, 0.0, np.where(values > c + w / 2, 1.0, (values - c) / w + 0.5))
    return y * (hi - lo) + lo


def test_window_center_width_is_applied():
    x = xray16(12)
    center = float(np.median(x))  # real or synthetic pixels: a window narrower than their spread
    width = float(np.percentile(x, 90) - np.percentile(x, 10)) / 2
    got = display(dicom(x, bits_stored=12, WindowCenter=center, WindowWidth=width))
    assert np.abs(got.astype(float) - linear_window(x.astype(float), center, width)).max() <= 1
    assert (got == 0).mean() > 0.01 and (got == 255).mean() > 0.01  # a narrow window saturates
    assert not np.array_equal(got, display(dicom(x, bits_stored=12)))


def test_window_on_8_bit_and_monochrome1():
    x = xray8()
    got = display(dicom(x, WindowCenter=128, WindowWidth=100))
    assert np.abs(got.astype(float) - linear_window(x.astype(float), 128, 100)).max() <= 1
    inverted = display(dicom(x, photometric="MONOCHROME1", WindowCenter=128, WindowWidth=100))
    assert np.array_equal(inverted, 255 - got)


def test_rescale_slope_intercept_then_window():
    x = xray16(12)
    slope, intercept, center, width = 2.0, -1024.0, 2000.0, 3000.0
    got = display(dicom(x, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept,
                        WindowCenter=center, WindowWidth=width))
    # the window acts on modality values; its output range is the rescaled stored range
    lo, hi = intercept, 4095 * slope + intercept
    want = linear_window(x * slope + intercept, center, width, lo, hi)
    assert np.abs(got.astype(float) - (want - lo) / (hi - lo) * 255).max() <= 1


def test_rescale_without_a_window_uses_the_percentiles_of_the_modality_values():
    x = xray16(12)
    got = display(dicom(x, bits_stored=12, RescaleSlope=2.0, RescaleIntercept=-1024.0))
    # a linear rescale does not move a percentile window: the stored values' one, within a level
    assert np.abs(got.astype(int) - sixteen_bit_to_8bit(x)).max() <= 1


def test_signed_pixels_with_rescale():
    x = (xray16(12).astype(np.int32) - 2048).astype(np.int16)
    got = display(dicom(x, bits_stored=12, RescaleSlope=1.0, RescaleIntercept=2048.0))
    assert np.abs(got.astype(int) - sixteen_bit_to_8bit((x.astype(np.int32) + 2048).astype(np.uint16))).max() <= 1


def test_weighted_percentiles_are_numpys():
    from cxr.imaging.dicom import weighted_percentiles

    rng = np.random.default_rng(0)
    levels = rng.normal(0, 500, 4096)
    image = rng.integers(0, 4096, 100_000)
    counts = np.bincount(image, minlength=4096)
    assert weighted_percentiles(levels, counts) == pytest.approx(np.percentile(levels[image], [0.5, 99.5]),
                                                                  rel=1e-12, abs=1e-9)


def test_voi_lut_sequence_is_applied():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    x = xray16(12)
    lut = (np.sqrt(np.arange(4096) / 4095) * 4095).astype(np.uint16)  # a 12-bit gamma curve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = lut.tobytes()  # OW, as most files carry it
    ds = dataset(x, bits_stored=12, WindowCenter=100, WindowWidth=10)  # the LUT wins over the window
    ds.VOILUTSequence = Sequence([item])
    from tests.dicom_files import encode

    got = display(encode(ds))
    want = lut[x].astype(float) / lut.max() * 255
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("body_part", ["CHEST", "chest ", " Chest", "", None])
def test_chest_or_no_body_part_is_accepted(body_part):
    preprocess_bytes(dicom(xray8(), body_part=body_part), CFG)


@pytest.mark.parametrize("modality", ["CR", "DX", "RG"])
def test_radiograph_modalities_are_accepted(modality):
    preprocess_bytes(dicom(xray8(), modality=modality), CFG)


@pytest.mark.parametrize("name", list(refused_variants()))
def test_hostile_or_unsuitable_dicom_is_refused_with_its_reason(name):
    data, status, words = refused_variants()[name]
    with pytest.raises(RequestError) as info:
        decode(data, CFG)
    assert info.value.status == status and words in str(info.value), str(info.value)
    assert not [m for m in PATIENT_MARKERS if m in str(info.value)]


def test_unreadable_file_meta_is_unsupported():
    with pytest.raises(ImageError) as info:
        preprocess_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 10, CFG)
    assert info.value.kind == "unsupported"


def test_pixel_decoding_holds_the_decode_budget():
    from contextlib import contextmanager

    held = []

    @contextmanager
    def reserve(cost):
        held.append(cost)
        yield

    x = xray16(12)
    preprocess_bytes(dicom(x, JPEG2000Lossless, bits_stored=12), CFG, reserve)
    assert held and held[0] >= x.size * 8  # a JPEG 2000 decoder's working memory, not just the array


def test_rle_decoder_is_bounded_by_the_frame_size():
    """pydicom's own RLE decoder inflates a segment without bound; pylibjpeg-rle's stops at the frame."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless as rle

    from tests.dicom_files import encode

    ds = dataset(xray8())
    ds.file_meta.TransferSyntaxUID = rle
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + b"\x00" * 56
    ds.PixelData = encapsulate([header + b"\x81\x00" * 2_000_000])  # 4 MB of runs: 256 MB inflated
    ds["PixelData"].VR = "OB"
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = preprocess_bytes(encode(ds), CFG)
    assert out.shape == (64, 64)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


def test_no_patient_data_reaches_any_message_or_log(caplog, recwarn):
    import logging

    caplog.set_level(logging.DEBUG)
    texts = []
    for data, _, _ in refused_variants().values():
        try:
            preprocess_bytes(data, CFG)
        except ImageError as exc:
            texts.append(str(exc))
    preprocess_bytes(dicom(xray16(12), bits_stored=12, WindowCenter=1500, WindowWidth=1200), CFG)
    texts += [r.getMessage() for r in caplog.records] + [str(w.message) for w in recwarn]
    leaked = [(m, t) for t in texts for m in PATIENT_MARKERS if m in t]
    assert not leaked
