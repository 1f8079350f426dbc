"""DICOM uploads -> the 8-bit grayscale image :mod:`cxr.imaging.preprocess` then treats exactly like a PNG.

Why a module of its own: a DICOM file says what it shows (modality, body part, frames) and how
its stored values become what a radiologist sees (rescale / Modality LUT, then a VOI window or
LUT, MONOCHROME1 inverted). Both are read from the header before a pixel is decoded, so a CT,
a hand, a cine loop or a bomb is refused with its reason, as a PNG's header is checked first.

Without a VOI window the values are windowed between their 0.5 and 99.5 percentiles, with
:func:`cxr.imaging.primitives.sixteen_bit_to_8bit` when they are the stored 16-bit values themselves: a
DICOM of a 16-bit PNG's pixels gives that PNG's bytes, and an 8-bit MONOCHROME2 one its pixels.

No message names anything but the image's technical facts (modality, body part as DICOM code
strings, sizes, bit depths, transfer syntax names): never a patient's name, id, date, UID or
institution, and no library message that might quote one.
"""

from __future__ import annotations

import io
import re
import struct

import numpy as np
import pydicom
from PIL import Image
from pydicom import config as _pydicom_config
from pydicom import uid as _uid
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from cxr.imaging.primitives import (MAX_DECODE_BYTES, MAX_PIXELS, MIN_SIDE, ImageError, sixteen_bit_to_8bit,
                                    window_to_8bit)

# pydicom's read-time value validation warns (and logs) with the offending value quoted, which
# for a malformed PatientName would put it in the server log. Nothing here needs it.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE

RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")  # computed, digital and conventional radiography
CHEST = "CHEST"
DEFLATED = "1.2.840.10008.1.2.1.99"
# Compressed syntaxes whose codestream header is checked against Rows x Columns before decoding.
_JPEG_FAMILY = frozenset(_uid.JPEGTransferSyntaxes) | frozenset(_uid.JPEGLSTransferSyntaxes)
_J2K_FAMILY = frozenset(_uid.JPEG2000TransferSyntaxes)
_RLE = frozenset(_uid.RLETransferSyntaxes)
_NATIVE = frozenset(_uid.UncompressedTransferSyntaxes) - {DEFLATED}
# pydicom's own RLE decoder inflates a segment without bound (a 10 MB frame to 640 MB);
# pylibjpeg-rle writes into the frame's size.
_PLUGIN = {ts: "pylibjpeg" for ts in _RLE}
_READ = _NATIVE | _RLE | _JPEG_FAMILY | _J2K_FAMILY
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")


def _shown(value) -> str:
    """A code-string value as it may appear in a message: only a well-formed DICOM CS."""
    text = str(value or "").strip().upper()
    return text if _CODE_STRING.fullmatch(text) else "(not a DICOM code string)"


def _transfer_syntax_in_meta(data: bytes) -> str | None:
    """(0002,0010) from the file meta group, read before pydicom parses (or inflates) anything."""
    offset, end = 132, min(len(data), 132 + 16384)
    while offset + 8 <= end:
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            return None
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"):
            (length,), start = struct.unpack_from("<I", data, offset + 8), offset + 12
        else:
            (length,), start = struct.unpack_from("<H", data, offset + 6), offset + 8
        if element == 0x0010:
            return data[start : start + length].decode("ascii", "replace").strip("\x00 ")
        offset = start + length
    return None


def _int(ds, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise ImageError(f"DICOM header lacks {keyword}", "corrupt")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageError(f"DICOM header's {keyword} is not a number", "corrupt") from None


def _jpeg_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG / JPEG-LS start-of-frame, walking the segments."""
    if frame[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            return None
        marker = frame[offset + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            if offset + 10 > len(frame):
                return None
            rows, cols = struct.unpack_from(">HH", frame, offset + 5)
            return rows, cols, frame[offset + 9]
        (length,) = struct.unpack_from(">H", frame, offset + 2)
        offset += 2 + length
    return None


def _j2k_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from a JPEG 2000 codestream's SIZ segment (JP2 box skipped)."""
    offset = 0
    if frame.startswith(b"\x00\x00\x00\x0cjP  "):  # a JP2 file: find the codestream box
        offset = 12
        while offset + 8 <= len(frame) and frame[offset + 4 : offset + 8] != b"jp2c":
            (length,) = struct.unpack_from(">I", frame, offset)
            if length < 8:
                return None
            offset += length
        offset += 8
    if frame[offset : offset + 4] != b"\xff\x4f\xff\x51" or offset + 42 > len(frame):
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, offset + 8)
    (components,) = struct.unpack_from(">H", frame, offset + 40)
    return ysiz - yo, xsiz - xo, components


class DicomImage:
    """A DICOM whose header passed every check; :meth:`decode` reads its pixels (within the
    decode budget :func:`cxr.imaging.preprocess.preprocess_image` holds) as 8-bit gray."""

    format = "DICOM"

    def __init__(self, ds, transfer_syntax: str, rows: int, columns: int, bits_allocated: int):
        self._ds, self._ts = ds, transfer_syntax
        self.size = (columns, rows)
        self.mode = f"DICOM {bits_allocated}-bit"
        per_sample = bits_allocated // 8
        # Peak bytes a pixel, from measurements of each decoder (VmHWM, 3000x3000): the decoded
        # array, a copy for the percentiles, the 8-bit result and its PIL image after decoding;
        # while decoding, RLE takes 4 bytes a sample and JPEG (2000) decoders ~4 a pixel more.
        after = 3 * per_sample + 1
        if transfer_syntax in _NATIVE:
            during = per_sample
        elif transfer_syntax in _RLE:
            during = 4 * per_sample
        else:
            during = 4 + 3 * per_sample
        self.decode_cost = rows * columns * max(after, during)

    def decode(self) -> Image.Image:
        ds, (columns, rows) = self._ds, self.size
        try:
            arr, _ = get_decoder(self._ts).as_array(ds, index=0, decoding_plugin=_PLUGIN.get(self._ts, ""))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise many types; their text is not shown
            raise ImageError(f"corrupt or truncated DICOM pixel data: the {_uid.UID(self._ts).name} "
                             f"decoder failed ({type(exc).__name__})", "corrupt") from None
        if arr.shape != (rows, columns):
            raise ImageError(f"DICOM pixel data decoded to {arr.shape}, not the {rows}x{columns} of its header",
                             "corrupt")
        return Image.fromarray(to_display(arr, ds), mode="L")


def open_dicom(data: bytes, *, max_pixels: int = MAX_PIXELS) -> DicomImage:
    """Check a DICOM file's header (nothing decoded yet); :class:`ImageError` says what is refused."""
    ts = _transfer_syntax_in_meta(data)
    if not ts:
        raise ImageError("DICOM file without a readable Transfer Syntax UID in its file meta information: "
                         "cannot tell how it is encoded", "unsupported")
    if ts == DEFLATED:  # pydicom inflates the whole data set in one call, without a bound
        raise ImageError("deflated DICOM (Deflated Explicit VR Little Endian) is not read: send it uncompressed, "
                         "RLE, JPEG or JPEG 2000", "unsupported")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, struct/EOF errors, bad lengths...
        raise ImageError(f"corrupt or truncated DICOM file ({type(exc).__name__})", "corrupt") from None
    try:
        return _check(ds, ts, max_pixels)
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed element, met while the header is checked
        raise ImageError(f"corrupt DICOM header ({type(exc).__name__})", "corrupt") from None


def _check(ds, ts: str, max_pixels: int) -> DicomImage:
    modality = _shown(ds.get("Modality"))
    if modality not in RADIOGRAPH_MODALITIES:
        if not str(ds.get("Modality") or "").strip():
            modality = "(absent)"
        raise ImageError(f"DICOM modality {modality} is not a radiograph (accepted: "
                         f"{', '.join(RADIOGRAPH_MODALITIES)})", "not_a_radiograph")
    body_part = str(ds.get("BodyPartExamined") or "").strip().upper()
    if body_part and body_part != CHEST:
        raise ImageError(f"DICOM body part {_shown(body_part)} is not a chest (accepted: {CHEST}, or none given)",
                         "not_a_chest")
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        raise ImageError("DICOM file carries no Pixel Data (7FE0,0010)"
                         + (f" (only {other[0]}, which is not a radiograph's)" if other else ""), "no_pixels")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise ImageError(f"multi-frame DICOM ({frames} frames) refused: send one radiograph a file", "multi_frame")
    # Only a standard syntax is named (an unknown UID is never echoed).
    name = _uid.UID(ts).name if ts in _uid.AllTransferSyntaxes else "(not a standard transfer syntax)"
    if ts not in _READ:
        raise ImageError(f"DICOM transfer syntax {name} is not read here (read: uncompressed, RLE, JPEG, "
                         "JPEG-LS, JPEG 2000)", "unsupported")
    try:
        decoder = get_decoder(ts)
        available = decoder.is_available and (ts not in _PLUGIN or _PLUGIN[ts] in decoder.available_plugins)
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        raise ImageError(f"DICOM transfer syntax {name}: no decoder for it is installed here", "unsupported")

    samples = _int(ds, "SamplesPerPixel")
    photometric = _shown(ds.get("PhotometricInterpretation"))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(f"colour DICOM ({samples} samples a pixel, {photometric}) is not read: a radiograph is "
                         "MONOCHROME1 or MONOCHROME2", "unsupported")
    bits_allocated, bits_stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise ImageError(f"DICOM of {bits_allocated} bits allocated, {bits_stored} stored is not read "
                         "(8 or 16 allocated, at most that many stored)", "unsupported")
    if _int(ds, "PixelRepresentation", 0) not in (0, 1):
        raise ImageError("DICOM PixelRepresentation must be 0 or 1", "corrupt")
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows * columns > max_pixels:
        raise ImageError(f"image refused: {columns}x{rows} pixels exceeds the {max_pixels} pixel limit",
                         "too_many_pixels")
    if rows < MIN_SIDE or columns < MIN_SIDE:
        raise ImageError(f"image too small: {columns}x{rows} (minimum {MIN_SIDE}x{MIN_SIDE})", "too_small")
    image = DicomImage(ds, ts, rows, columns, bits_allocated)
    if image.decode_cost > MAX_DECODE_BYTES:
        raise ImageError(f"image refused: decoding {columns}x{rows} {image.mode} pixels would take "
                         f"{image.decode_cost / 2**20:.0f} MiB (limit {MAX_DECODE_BYTES / 2**20:.0f} MiB)",
                         "too_many_pixels")
    _check_pixel_data(ds, ts, rows, columns, bits_allocated)
    return image


def _check_pixel_data(ds, ts: str, rows: int, columns: int, bits_allocated: int) -> None:
    """The pixel data is as large as the header says (native), or its one frame's codestream
    declares the header's size (compressed): a decoder never allocates for a size we did not check."""
    if ts in _NATIVE:
        expected, got = rows * columns * bits_allocated // 8, len(ds.PixelData)
        if got < expected:
            raise ImageError(f"DICOM pixel data is truncated: {got} bytes of the {expected} its header declares",
                             "corrupt")
        return
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"corrupt DICOM pixel data: no readable frame ({type(exc).__name__})", "corrupt") from None
    if ts in _RLE:
        segments = int.from_bytes(frame[:4], "little") if len(frame) >= 64 else -1
        if segments != bits_allocated // 8:
            raise ImageError(f"corrupt DICOM RLE frame: {segments} segments for {bits_allocated}-bit gray", "corrupt")
        return
    found = _jpeg_size(frame) if ts in _JPEG_FAMILY else _j2k_size(frame)
    if found is None:
        raise ImageError(f"corrupt DICOM pixel data: the {_uid.UID(ts).name} frame has no readable size", "corrupt")
    if found != (rows, columns, 1):
        raise ImageError(f"DICOM frame is {found[1]}x{found[0]} with {found[2]} components; its header says "
                         f"{columns}x{rows} gray", "corrupt")


# ---------------------------------------------------------------- stored values -> 8-bit display


def _has_rescale(ds) -> bool:
    if ds.get("ModalityLUTSequence"):
        return True
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return float(ds.RescaleSlope) != 1.0 or float(ds.RescaleIntercept) != 0.0
    return False


def _voi_lut(ds):
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return seq[0]
    return None


def _has_voi(ds) -> bool:
    return _voi_lut(ds) is not None or (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None)


def _voi_range(ds) -> tuple[float, float]:
    """What the VOI step's darkest and brightest outputs are: a LUT's own extremes (LUTs often
    use less than their nominal depth), or the window's output range (the ends of an infinitely
    wide input), mapped to 0 and 255."""
    lut = _voi_lut(ds)
    if lut is not None:
        entries, first = int(lut.LUTDescriptor[0]) or 65536, int(lut.LUTDescriptor[1])
        out = apply_voi_lut(np.arange(first, first + entries), ds, index=0, prefer_lut=True)
        return float(np.min(out)), float(np.max(out))
    with np.errstate(over="ignore"):
        out = apply_voi_lut(np.array([-1e15, 1e15]), ds, index=0, prefer_lut=True)
    return float(out[0]), float(out[1])


def weighted_percentiles(values: np.ndarray, counts: np.ndarray, qs=(0.5, 99.5)) -> list[float]:
    """``np.percentile`` (linear) of the image whose pixels take ``values[i]`` ``counts[i]`` times,
    without building that image."""
    keep = counts > 0
    order = np.argsort(values[keep], kind="stable")
    v, cum = values[keep][order].astype(np.float64), np.cumsum(counts[keep][order])
    n = int(cum[-1])
    out = []
    for q in qs:
        h = (n - 1) * q / 100.0
        k = int(np.floor(h))
        a = v[np.searchsorted(cum, k, side="right")]
        b = v[np.searchsorted(cum, min(k + 1, n - 1), side="right")]
        out.append(float(a + (b - a) * (h - k)))
    return out


def to_display(arr: np.ndarray, ds) -> np.ndarray:
    """Stored pixel values -> uint8 as shown: rescale / Modality LUT, then the VOI window or LUT
    (else the percentile window), MONOCHROME1 inverted; through one table over every stored value."""
    invert = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    unsigned = np.dtype(f"uint{arr.dtype.itemsize * 8}")
    stored = np.arange(2 ** (8 * arr.dtype.itemsize), dtype=unsigned).view(arr.dtype)
    index = arr.view(unsigned)
    try:
        rescale, voi = _has_rescale(ds), _has_voi(ds)
        if not rescale and not voi and arr.dtype in (np.uint8, np.uint16):
            if invert:  # inverted within the stored bits first: then exactly the PNG of what is shown
                top = (1 << int(getattr(ds, "BitsStored", 8 * arr.dtype.itemsize))) - 1
                arr = (top - np.minimum(arr, top)).astype(arr.dtype)
            return arr if arr.dtype == np.uint8 else sixteen_bit_to_8bit(arr)  # a PNG of these pixels
        values = apply_modality_lut(stored, ds) if rescale else stored
        if voi:
            shown = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            lo, hi = _voi_range(ds)
        else:
            shown = values
            counts = np.zeros(stored.size, np.int64)
            flat = index.reshape(-1)
            for start in range(0, flat.size, 1 << 20):  # bounded memory (bincount works in intp)
                counts += np.bincount(flat[start : start + (1 << 20)], minlength=stored.size)
            lo, hi = weighted_percentiles(np.asarray(values, dtype=np.float64), counts)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed LUT, window or VOI function
        raise ImageError(f"DICOM rescale / VOI LUT / window values cannot be applied ({type(exc).__name__})",
                         "corrupt") from None
    shown = np.asarray(shown, dtype=np.float64)
    if not (np.isfinite(shown).all() and np.isfinite([lo, hi]).all()):
        raise ImageError("DICOM rescale / window values give non-finite intensities", "corrupt")
    table = window_to_8bit(shown, lo, hi) if hi >= lo else 255 - window_to_8bit(shown, hi, lo)
    if invert:
        table = 255 - table
    return table[index]
