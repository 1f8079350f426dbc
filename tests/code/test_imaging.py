"""THE preprocessing: every input kind a service may receive, and its failure messages."""

import io

import numpy as np
import pytest
from PIL import Image

from cxr.imaging import ImageError, ImagingConfig, preprocess_bytes, to_model_input

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
