"""DICOM files built in memory with pydicom, for the DICOM tests (unit and over HTTP).

Every file carries made-up patient data (name, id, dates, UIDs, institution) whose strings are
in :data:`PATIENT_MARKERS`: no answer, error or log line may contain any of them.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from tests.shared_paths import DATA

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
PATIENT = {
    "PatientName": "Qzxwvy^Jonquilla^Marker",
    # 70 characters: over LO's 64, so a validating reader would warn (quoting it) on reading
    "PatientID": "PIDQ8675309XQ" * 5 + "ZZZZZ",
    "PatientBirthDate": "19010203",
    "StudyDate": "20240517",
    "SeriesDate": "20240518",
    "AcquisitionDateTime": "20240517081533",
    "InstitutionName": "Saint Quillfeather Infirmary",
    "ReferringPhysicianName": "Drqxx^Yzzmondo",
    "AccessionNumber": "ACCQ77191",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.31415926535897",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.27182818284590",
}
SOP_INSTANCE_UID = "1.2.826.0.1.3680043.8.498.16180339887498"
PATIENT_MARKERS = [*(str(v) for v in PATIENT.values()), "Qzxwvy", "Jonquilla", "PIDQ8675309", "Quillfeather",
                   SOP_INSTANCE_UID, "31415926535897", "27182818284590", "16180339887498"]


def xray8(size: int = 224) -> np.ndarray:
    """A real chest X-ray's pixels when ../shared has the data set, else a synthetic radiograph."""
    files = sorted(DATA.glob("train/NORMAL/*.jpeg"))[:1] if DATA.is_dir() else []
    if files:
        return np.asarray(Image.open(files[0]).convert("L"))
    from cxr.data.sources.synthetic import _patient_anatomy, draw

    rng = np.random.default_rng(7)
    return np.asarray(draw(rng, _patient_anatomy(rng), size)[0])


def xray16(bits: int = 12) -> np.ndarray:
    """The 8-bit X-ray spread over ``bits`` stored bits, with detector-like low-order noise."""
    base = xray8().astype(np.uint32) << (bits - 8)
    noise = np.random.default_rng(3).integers(0, 1 << (bits - 8), base.shape)
    return (base + noise).astype(np.uint16)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def dataset(arr: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
            modality: str | None = "DX", body_part: str | None = "CHEST", **attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_INSTANCE_UID
    ds.SOPClassUID, ds.SOPInstanceUID = DX_FOR_PRESENTATION, SOP_INSTANCE_UID
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    if modality is not None:
        ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def encode(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif transfer_syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    elif transfer_syntax is not None:
        raise ValueError(f"no encoder here for {transfer_syntax}")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom(arr: np.ndarray, transfer_syntax: str | None = None, **kw) -> bytes:
    return encode(dataset(arr, **kw), transfer_syntax)


def without_pixels() -> bytes:
    ds = dataset(xray8())
    del ds.PixelData
    return encode(ds)


def with_meta(data: bytes, transfer_syntax: str) -> bytes:
    """``data`` re-saved with its file meta claiming another transfer syntax (pixels unchanged)."""
    import pydicom

    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([bytes(ds.PixelData)])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def deflated() -> bytes:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dataset(xray8())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def lying_j2k() -> bytes:
    """A JPEG 2000 frame of the full X-ray under a header that says 100x100."""
    ds = dataset(xray8())
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.Rows = ds.Columns = 100
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def refused_variants() -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, HTTP status, words the error names)."""
    x8 = xray8()
    return {
        "CT modality": (dicom(x8, modality="CT"), 422, "modality CT is not a radiograph"),
        "MR modality": (dicom(x8, modality="MR"), 422, "modality MR"),
        "mammography": (dicom(x8, modality="MG"), 422, "modality MG"),
        "no modality": (dicom(x8, modality=None), 422, "not a radiograph"),
        "body part HAND": (dicom(x8, body_part="HAND"), 422, "body part HAND is not a chest"),
        "body part knee": (dicom(x8, body_part=" knee "), 422, "body part KNEE"),
        "multi-frame": (dicom(x8, NumberOfFrames=2), 422, "multi-frame"),
        "no pixel data": (without_pixels(), 422, "no Pixel Data"),
        "colour RGB": (dicom(np.stack([x8] * 3, axis=-1), photometric="RGB"), 415, "colour"),
        "32 bits allocated": (dicom(xray16(), BitsAllocated=32, BitsStored=32, HighBit=31), 415,
                              "32 bits allocated"),
        "unknown transfer syntax": (with_meta(dicom(x8), "1.2.3.4.5.6.7"), 415, "transfer syntax"),
        "MPEG-2 transfer syntax": (with_meta(dicom(x8), "1.2.840.10008.1.2.4.100"), 415, "MPEG2"),
        "deflated": (deflated(), 415, "deflated"),
        "60000x60000 header, tiny data": (dicom(x8, Rows=60000, Columns=60000), 413, "pixel limit"),
        "6000x6000 16-bit header": (dicom(xray16(), Rows=6000, Columns=6000), 413, "would take"),
        "truncated file": (dicom(x8)[: len(dicom(x8)) // 2], 422, "truncated"),
        "J2K frame larger than header": (lying_j2k(), 422, "its header says"),
    }
