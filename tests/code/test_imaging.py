"""THE preprocessing: every input kind a service may receive, and its failure messages."""

import io

import numpy as np
import pytest
from PIL import Image

from cxr.imaging.preprocess import ImagingConfig, preprocess_bytes, to_model_input
from cxr.imaging.primitives import ImageError

CFG = ImagingConfig(image_size=64, intensity="equalize")


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def xray_like(w=300, h=240, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 80 + 100 * np.exp(-(((xx - w / 2) / (w / 5)) ** 2)) + rng.normal(0, 8, (h, w))
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK", "RGBA", "P"])
def test_every_mode_gives_the_same_shape_and_uses_the_full_range(mode):
    img = Image.fromarray(xray_like()).convert(mode)
    fmt = "JPEG" if mode in ("L", "RGB", "CMYK") else "PNG"
    out = preprocess_bytes(encode(img, fmt), CFG)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out.min() <= 5 and out.max() >= 250  # equalised


def test_16_bit_png_is_scaled_not_clipped():
    arr16 = (xray_like().astype(np.uint16) * 200)
    img16 = Image.fromarray(arr16)
    assert img16.mode == "I;16"
    out = preprocess_bytes(encode(img16), CFG)
    ref = preprocess_bytes(encode(Image.fromarray(xray_like())), CFG)
    assert out.shape == (64, 64)
    # Same picture at another bit depth: nearly the same preprocessed image.
    assert np.corrcoef(out.ravel().astype(float), ref.ravel().astype(float))[0, 1] > 0.95


def test_grayscale_and_rgb_versions_agree():
    gray = xray_like()
    a = preprocess_bytes(encode(Image.fromarray(gray)), CFG)
    b = preprocess_bytes(encode(Image.fromarray(gray).convert("RGB")), CFG)
    assert np.array_equal(a, b)


def test_large_jpeg_draft_decoding_matches_full_decode_closely():
    big = Image.fromarray(xray_like(1600, 1400)).resize((1600, 1400))
    data = encode(big, "JPEG", quality=92)
    fast = preprocess_bytes(data, ImagingConfig(224, "none")).astype(float)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((224, 224), Image.Resampling.BILINEAR)).astype(float)
    assert np.abs(fast - full).mean() < 3.0


def test_intensity_modes_differ():
    data = encode(Image.fromarray(xray_like()))
    outs = {m: preprocess_bytes(data, ImagingConfig(64, m)) for m in ("equalize", "autocontrast", "none")}
    assert not np.array_equal(outs["equalize"], outs["none"])
    assert not np.array_equal(outs["autocontrast"], outs["none"])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, this is not an image" * 10, "not a supported image"),
        (encode(Image.new("L", (1, 1))), "too small"),
    ],
)
def test_bad_bytes_give_specific_errors(data, message):
    with pytest.raises(ImageError, match=message):
        preprocess_bytes(data, CFG)


def test_truncated_jpeg_is_refused():
    data = encode(Image.fromarray(xray_like(600, 600)), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        preprocess_bytes(data[: len(data) // 2], CFG)


def test_decompression_bomb_is_refused_from_the_header():
    # A 30000x30000 1-bit PNG compresses to ~100 kB; it must be refused without decoding.
    bomb = encode(Image.new("1", (30000, 30000)), optimize=True)
    with pytest.raises(ImageError, match="pixel"):
        preprocess_bytes(bomb, CFG)


def test_other_formats_are_refused():
    with pytest.raises(ImageError, match="unsupported image format"):
        preprocess_bytes(encode(Image.fromarray(xray_like()), "GIF"), CFG)


def test_config_is_checked():
    from cxr import UserError

    with pytest.raises(UserError, match="imaging.intensity"):
        ImagingConfig.from_params({"image_size": 224, "intensity": "clahe"})
    with pytest.raises(UserError, match="imaging.image_size"):
        ImagingConfig.from_params({"image_size": 8, "intensity": "none"})


def test_model_input_shape():
    x = to_model_input([np.zeros((64, 64), np.uint8)] * 3)
    assert x.shape == (3, 64, 64, 1) and x.dtype == np.float32


# ------------------------------------------------------------------ the decode budget


def refused_without_decoding(data: bytes, words: str) -> None:
    """Refused with ``words``, and the refusal allocates almost nothing (the header alone)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=words):
            preprocess_bytes(data, CFG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"


def test_pixel_memory_bombs_are_refused_from_the_header():
    # Under the 40 MP pixel cap, but 16-bit: the 78 kB file that once took 3.4 GB in 4 requests.
    bomb16 = encode(Image.fromarray(np.zeros((6324, 6324), np.uint16)), optimize=True)
    assert len(bomb16) < 200_000 and Image.open(io.BytesIO(bomb16)).mode == "I;16"
    refused_without_decoding(bomb16, r"6324x6324 I;16 pixels would take \d+ MiB")
    rgba = encode(Image.new("RGBA", (3000, 3000)), optimize=True)
    refused_without_decoding(rgba, "3000x3000 RGBA")


def test_real_detector_sizes_still_decode():
    # A 16-bit 3000x2500 flat-panel image and an 8-bit 40 MP PNG both fit the budget.
    rng = np.random.default_rng(3)
    arr16 = np.repeat(np.repeat(xray_like(300, 250).astype(np.uint16) * 250, 10, 0), 10, 1)
    arr16 = arr16 + rng.integers(0, 40, arr16.shape, dtype=np.uint16)
    out = preprocess_bytes(encode(Image.fromarray(arr16)), ImagingConfig(224, "none"))
    assert out.shape == (224, 224) and out.max() >= 240  # scaled to 8 bits, not clipped
    big8 = encode(Image.new("L", (6300, 6300), 90), optimize=True)
    assert preprocess_bytes(big8, CFG).shape == (64, 64)


def test_16_bit_table_gives_the_values_of_the_float_formula():
    rng = np.random.default_rng(5)
    arr16 = rng.integers(0, 4096, (80, 70), dtype=np.uint16) * 13
    from cxr.imaging.preprocess import _to_grayscale

    got = np.asarray(_to_grayscale(Image.fromarray(arr16)))
    f = arr16.astype(np.float64)
    lo, hi = np.percentile(f, [0.5, 99.5])
    want = (np.clip((f - lo) / max(hi - lo, 1e-9), 0, 1) * 255.0).astype(np.uint8)
    assert np.array_equal(got, want)


def test_jpeg_with_absurdly_many_scans_is_refused():
    # Built by appending start-of-scan markers after a small JPEG (no encoder here writes 100+
    # scans); the count is taken from the bytes before decoding, as for a real one.
    data = encode(Image.fromarray(xray_like()), "JPEG", progressive=True)
    assert preprocess_bytes(data, CFG).shape == (64, 64)
    with pytest.raises(ImageError, match="scans"):
        preprocess_bytes(data + b"\xff\xda\x00\x08" * 101, CFG)


def test_mpo_is_draft_decoded_like_jpeg():
    from cxr.imaging.preprocess import decode_cost, open_image

    frames = [Image.fromarray(xray_like(3200, 3000)), Image.fromarray(xray_like(3200, 3000, seed=1))]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    img = open_image(buf.getvalue())
    assert img.format == "MPO"
    img.draft("L", (224, 224))
    assert decode_cost(img) < 3200 * 3000  # decoded at a reduced scale
    assert preprocess_bytes(buf.getvalue(), ImagingConfig(224, "none")).shape == (224, 224)


def test_decode_budget_queues_then_answers_503():
    import threading

    from cxr.serve.decoding import DecodeBudget, RequestError

    budget = DecodeBudget(capacity=100, wait_s=0.3)
    held = threading.Event()
    release = threading.Event()

    def hold():
        with budget.reserve(80):
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    with pytest.raises(RequestError) as exc:
        with budget.reserve(80):
            pass
    assert exc.value.status == 503 and "retry" in str(exc.value)
    with budget.reserve(20):  # what is left is still usable
        assert budget.in_use == 100
    release.set()
    t.join(5)
    with budget.reserve(80):
        assert budget.in_use == 80
    assert budget.in_use == 0
