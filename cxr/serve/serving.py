"""Request/response logic of the served model, shared by ``service.py`` and the Lambda handler.

Nothing here knows BentoML: it turns uploaded bytes into model input with THE training
preprocessing (:func:`cxr.imaging.preprocess.preprocess_bytes`), fetches an image URL only when an
operator allowlisted its host (size- and time-limited; local paths never), runs the
exported TFLite model (LiteRT: the prediction and, from the same pass, its explanation; no
TensorFlow), and builds the answers.

Every refusal is a :class:`RequestError` with an HTTP status (400/403/413/415/422) and a
specific message; the service turns it into a JSON error, never a traceback. Image bytes
are never logged.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from cxr import HOW_TO_SERVE_REAL, LABELS, POSITIVE_LABEL, SCREENING_NOTICE, SYNTHETIC_WARNING, UserError
from cxr.imaging.preprocess import ImagingConfig, is_dicom, preprocess_bytes
from cxr.imaging.primitives import MAX_BYTES, MAX_DECODE_BYTES, ImageError
from cxr.records.model_card import MARKDOWN_NAME as CARD_MARKDOWN
from cxr.records.model_card import ModelCard

log = logging.getLogger(__name__)

MAX_BATCH_IMAGES = 32
# A request body may carry one image of MAX_BYTES plus multipart framing; a batch is
# limited by the same total (the middleware in service.py refuses larger bodies unread).
MAX_REQUEST_BYTES = MAX_BYTES + 2 * 1024 * 1024
URL_ALLOWLIST_ENV = "CXR_URL_ALLOWLIST"      # comma-separated hosts; '*.example.org' for subdomains
URL_MAX_BYTES_ENV = "CXR_URL_MAX_BYTES"
URL_TIMEOUT_ENV = "CXR_URL_TIMEOUT_S"
DEFAULT_URL_TIMEOUT_S = 10.0
DECODE_BUDGET_ENV = "CXR_DECODE_BUDGET_MIB"  # decode memory shared by one process's requests
DEFAULT_DECODE_BUDGET_MIB = 256

STATUS_BY_KIND = {
    "empty": 400,
    "too_large": 413,
    "too_many_pixels": 413,
    "unsupported": 415,
    "too_small": 422,
    "corrupt": 422,
    # DICOM whose header says it is not what the model screens: readable, but not scorable
    "not_a_radiograph": 422,
    "not_a_chest": 422,
    "multi_frame": 422,
    "no_pixels": 422,
}


# A refusal's reason code (the audit trail's ``refusal``) when the raiser names none.
REASON_BY_STATUS = {400: "bad_request", 403: "url_refused", 408: "too_slow", 413: "too_large", 415: "unsupported",
                    422: "unprocessable", 429: "busy", 503: "busy"}


class RequestError(UserError):
    """A refused request: ``status`` is the HTTP status, ``str(exc)`` the message for the caller,
    ``reason`` a short code for the audit trail (an ImageError's kind, else from the status)."""

    def __init__(self, message: str, status: int = 400, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason or REASON_BY_STATUS.get(status, "bad_request" if status < 500 else "server_error")

    def to_dict(self) -> dict:
        return {"error": without_local_details(str(self)), "status": self.status}


# ---------------------------------------------------------------- image bytes -> model input

def sniff(data: bytes) -> str | None:
    """The container format from magic bytes (the client's content type is not trusted)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if is_dicom(data):
        return "dicom"
    return None


class DecodeBudget:
    """Bytes of decode memory shared by the requests of one process: a decode holds its
    :func:`cxr.imaging.preprocess.decode_cost` while it runs, so many large uploads at once queue instead
    of multiplying the peak; one that waits longer than ``wait_s`` is answered 503 (retry)."""

    def __init__(self, capacity: int, wait_s: float = 10.0):
        self.capacity, self.wait_s, self.in_use = capacity, wait_s, 0
        self._cond = threading.Condition()

    @classmethod
    def from_env(cls, env: dict | None = None) -> "DecodeBudget":
        env = os.environ if env is None else env
        raw = env.get(DECODE_BUDGET_ENV, "")
        try:
            mib = float(raw) if raw.strip() else DEFAULT_DECODE_BUDGET_MIB
        except ValueError:
            raise UserError(f"{DECODE_BUDGET_ENV} must be a number of MiB, got {raw!r}") from None
        if mib * 2**20 < MAX_DECODE_BYTES:
            raise UserError(f"{DECODE_BUDGET_ENV}={raw} is below one decode's limit "
                            f"({MAX_DECODE_BYTES / 2**20:.0f} MiB)")
        return cls(int(mib * 2**20))

    @contextmanager
    def reserve(self, cost: int):
        cost = min(cost, self.capacity)
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + cost <= self.capacity, timeout=self.wait_s):
                raise RequestError("the server is busy decoding other large images: retry shortly", 503)
            self.in_use += cost
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= cost
                self._cond.notify_all()


DECODE_BUDGET = DecodeBudget.from_env()


def decode(data: bytes | None, cfg: ImagingConfig, *, what: str = "image") -> np.ndarray:
    """Uploaded bytes -> uint8 ``[S, S]`` via :func:`cxr.imaging.preprocess.preprocess_bytes`, or RequestError."""
    if data is None or len(data) == 0:
        raise RequestError(f"empty {what}: no image bytes received (send a JPEG, PNG or DICOM file)", 400, "empty")
    if len(data) > MAX_BYTES:
        raise RequestError(f"{what} too large: {len(data)} bytes (limit {MAX_BYTES})", 413)
    if sniff(data) is None:
        raise RequestError(f"{what} is not a JPEG or PNG file, nor DICOM ('DICM' at byte 128): "
                           "unrecognised leading bytes", 415)
    try:
        return preprocess_bytes(data, cfg, DECODE_BUDGET.reserve)
    except RequestError:
        raise
    except ImageError as exc:
        raise RequestError(f"{what}: {exc}", STATUS_BY_KIND.get(exc.kind, 422),
                           exc.kind if exc.kind in STATUS_BY_KIND else "corrupt") from None
    except (MemoryError, Image.DecompressionBombError) as exc:  # belt and braces
        raise RequestError(f"{what} refused: too large to decode ({type(exc).__name__})", 413,
                           "too_many_pixels") from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug must be a 4xx about this input, not a 500
        log.warning("decoder failed on an upload: %s", type(exc).__name__)
        raise RequestError(f"{what} could not be decoded: {type(exc).__name__}", 422, "corrupt") from None


# ---------------------------------------------------------------- safe URL fetching


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts may be fetched, how many bytes, how long. Empty allowlist: fetching off."""

    allowlist: tuple[str, ...] = ()
    max_bytes: int = MAX_BYTES
    timeout_s: float = DEFAULT_URL_TIMEOUT_S

    @classmethod
    def from_env(cls, env: dict | None = None) -> "UrlPolicy":
        env = os.environ if env is None else env
        hosts = tuple(h.strip().lower() for h in env.get(URL_ALLOWLIST_ENV, "").split(",") if h.strip())
        try:
            max_bytes = int(env.get(URL_MAX_BYTES_ENV, MAX_BYTES))
            timeout = float(env.get(URL_TIMEOUT_ENV, DEFAULT_URL_TIMEOUT_S))
        except ValueError:
            raise UserError(f"{URL_MAX_BYTES_ENV} must be an int and {URL_TIMEOUT_ENV} a number") from None
        return cls(hosts, min(max_bytes, MAX_BYTES), timeout)

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.allowlist:
            if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
                return True
            if host == entry:
                return True
        return False


def fetch_url(url: str, policy: UrlPolicy) -> bytes:
    """GET an image from an allowlisted http(s) host; no redirects, bounded size and time."""
    import httpx

    if not isinstance(url, str) or not url.strip():
        raise RequestError("'url' must be a non-empty string", 400)
    try:
        parts = urlsplit(url.strip())
        host, _ = parts.hostname or "", parts.port  # .port validates the port
    except ValueError as exc:
        raise RequestError(f"'url' is not a valid URL: {exc}", 400) from None
    if parts.scheme not in ("http", "https"):
        raise RequestError(
            f"'url' must be an http(s) URL; scheme {parts.scheme or '(none)'!r} refused "
            "(local paths are never read)", 400)
    if not policy.allowlist:
        raise RequestError(
            f"fetching images by URL is disabled on this server (the operator enables it per host with "
            f"{URL_ALLOWLIST_ENV}); upload the file instead", 403)
    if parts.username or parts.password:
        raise RequestError("'url' must not carry credentials", 400)
    if not policy.allows(host):
        raise RequestError(f"host {host!r} is not in this server's URL allowlist", 403)
    deadline = time.monotonic() + policy.timeout_s
    chunks, total = [], 0
    try:
        with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
            with client.stream("GET", url.strip(), headers={"Accept": "image/jpeg, image/png"}) as resp:
                if resp.is_redirect:
                    raise RequestError(
                        f"{url} answered a redirect ({resp.status_code}); redirects are not followed", 422)
                if resp.status_code != 200:
                    raise RequestError(f"could not fetch {url}: HTTP {resp.status_code}", 422)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise RequestError(f"{url} is {declared} bytes (limit {policy.max_bytes})", 413)
                for chunk in resp.iter_bytes(64 * 1024):
                    total += len(chunk)
                    if total > policy.max_bytes:
                        raise RequestError(f"{url} exceeds {policy.max_bytes} bytes", 413)
                    if time.monotonic() > deadline:
                        raise RequestError(f"fetching {url} took longer than {policy.timeout_s:g} s", 422)
                    chunks.append(chunk)
    except httpx.TimeoutException:
        raise RequestError(f"fetching {url} timed out after {policy.timeout_s:g} s", 422) from None
    except httpx.HTTPError as exc:
        raise RequestError(f"could not fetch {url}: {type(exc).__name__}", 422) from None
    return b"".join(chunks)


# ---------------------------------------------------------------- the served model


@dataclass
class ServedModel:
    """An exported model directory (model.tflite, model_card.json) ready to serve."""

    path: Path
    tag: str
    card: ModelCard  # the record that travels with the files: imaging and threshold come from it
    tflite_threads: int | None = None

    def __post_init__(self):
        from cxr.model import ood
        from cxr.model.runtime import TFLiteModel

        self._tflite = TFLiteModel(self.path / "model.tflite", num_threads=self.tflite_threads)
        self._tflite_lock = threading.Lock()
        # Explanations get their own interpreter: a /predict never waits for one to finish.
        self._explainer = TFLiteModel(self.path / "model.tflite", num_threads=self.tflite_threads)
        self._explainer_lock = threading.Lock()
        detector = self.path / ood.FILE_NAME
        self.detector = ood.load(detector) if detector.is_file() and self._tflite.has_embedding else None
        if self.detector is None:
            log.warning("model %s has no not-a-chest-X-ray detector (exported before it existed): every "
                        "image gets a label; re-export it to refuse what is not a chest X-ray", self.tag)

    @classmethod
    def load(cls, path: str | Path, tag: str | None = None, tflite_threads: int | None = None) -> "ServedModel":
        path = Path(path)
        if not (path / "model.tflite").is_file():
            raise UserError(f"{path} lacks model.tflite: not an exported cxr model (re-export it)")
        card = ModelCard.read(path)
        return cls(path=path, tag=tag or card.name, card=card, tflite_threads=tflite_threads)

    @property
    def imaging(self) -> ImagingConfig:
        return self.card.imaging

    @property
    def threshold(self) -> float:
        return self.card.decision_threshold

    @property
    def synthetic(self) -> bool:
        return self.card.synthetic

    # -- inference
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """TFLite (LiteRT) probabilities for uint8 ``[N, S, S]`` (one interpreter, serialised)."""
        with self._tflite_lock:
            return self._tflite.predict(images)

    def screen(self, images: np.ndarray) -> tuple[np.ndarray, list[RequestError | None]]:
        """Probabilities and, per image, the refusal when it is not a chest X-ray (None when it
        is, or when the model has no detector): one forward pass for both."""
        if self.detector is None:
            return self.probabilities(images), [None] * len(images)
        with self._tflite_lock:
            probs, embedding = self._tflite.predict_with_embedding(images)
        return probs, self._refusals(embedding, images)

    def _refusals(self, embedding: np.ndarray, images: np.ndarray) -> list[RequestError | None]:
        from cxr.model.ood import Features

        # One scoring: an image with no failing test passes (what OodDetector.passes decides).
        refusal = unlike_synthetic_films if self.synthetic else not_a_chest_xray
        return [refusal(why) if why else None for why in self.detector.reasons(Features.of(embedding, images))]

    def predict_bytes(self, data: bytes | None) -> dict:
        """Image file bytes -> the answer for one image (RequestError for bad bytes, or for an
        image that is not a chest X-ray)."""
        image = decode(data, self.imaging)
        probs, refusals = self.screen(image[None])
        if refusals[0] is not None:
            raise refusals[0]
        return self.answer(float(probs[0]))

    def explain(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Heatmap in [0, 1] (Grad-CAM at out_relu, as the class activation map) and the
        probability, from one LiteRT forward pass, for one uint8 ``[S, S]`` image; a
        RequestError when it is not a chest X-ray."""
        with self._explainer_lock:
            heat, probability, embedding = self._explainer.explain_with_embedding(image)
        if self.detector is not None and embedding is not None:
            refusal = self._refusals(embedding, image[None])[0]
            if refusal is not None:
                raise refusal
        return heat, probability

    # -- answers
    def answer(self, probability: float) -> dict:
        return prediction(probability, self.threshold, self.tag, synthetic=self.synthetic)

    def model_card(self) -> dict:
        card_md = self.path / CARD_MARKDOWN
        return without_local_details({
            "model_tag": self.tag,
            "decision_threshold": self.threshold,
            "imaging": self.imaging.to_dict(),
            "labels": list(LABELS),
            "positive_label": POSITIVE_LABEL,
            "runtime": {"predict": "TFLite (LiteRT)",
                        "explain": "the same TFLite pass: class activation map at out_relu (= Grad-CAM for this head)",
                        "not_a_chest_xray": "refused (422) from the same pass's embedding (cxr/model/ood.py)"
                        if self.detector is not None else "not detected: this export predates the detector"},
            "notice": SCREENING_NOTICE,
            "warning": SYNTHETIC_WARNING if self.synthetic else None,
            "card": {k: v for k, v in self.card.to_dict().items() if k != "files"},  # no server paths
            "card_markdown": card_md.read_text() if card_md.is_file() else None,
        })


def health(tag: str, card: ModelCard) -> dict:
    """What ``/healthz`` says: the served model, its data, and for a synthetic one the warning."""
    return {"status": "ok", "model_tag": tag, "trained_on": "synthetic films (NOT a medical model)" if card.synthetic
            else without_local_details(str(card.data.get("source"))), "synthetic": card.synthetic,
            "decision_threshold": card.decision_threshold, "notice": SCREENING_NOTICE,
            **({"warning": SYNTHETIC_WARNING} if card.synthetic else {})}


def not_a_chest_xray(reasons: list[str]) -> RequestError:
    return RequestError(f"not a chest X-ray ({'; '.join(reasons)}): this service screens chest radiographs only "
                        "and gives no label for other images", 422, "not_a_chest_xray")


def unlike_synthetic_films(reasons: list[str]) -> RequestError:
    """The refusal of a model trained on the synthetic default: its detector knows only generated
    films, so a real chest X-ray is as far from them as a photograph. Saying "not a chest X-ray"
    would be true of the detector and wrong for the user."""
    return RequestError(f"unlike the SYNTHETIC films this demo model was trained on ({'; '.join(reasons)}): it "
                        "knows only generated images, so it refuses real chest X-rays too and gives no label. "
                        + HOW_TO_SERVE_REAL, 422, "unlike_synthetic_films")


# An absolute POSIX or Windows path of two or more parts inside a string (not the path part of
# an http URL), a file:// URL, and a URL's user:password@ part.
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])(?:file://)?(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"`|),;]+){2,}")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def without_local_details(value):
    """``value`` (card, error, any JSON) with local paths cut to ``<local>/name`` and URL
    credentials dropped: what a client may see of a model trained on someone's machine."""
    if isinstance(value, dict):
        return {k: without_local_details(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_details(v) for v in value]
    if isinstance(value, str):
        value = _URL_CREDENTIALS.sub(r"\1", value)
        return _LOCAL_PATH.sub(lambda m: "<local>/" + re.split(r"[/\\]", m.group(0))[-1], value)
    return value


def prediction(probability: float, threshold: float, tag: str, *, synthetic: bool = False) -> dict:
    """The answer for one image. Positive when ``probability >= threshold`` (as in cxr.metrics)."""
    p = float(probability)
    return {
        "label": POSITIVE_LABEL if p >= threshold else LABELS[0],
        "probability": round(p, 6),
        "decision_threshold": threshold,
        "model_tag": tag,
        "notice": SCREENING_NOTICE,
        **({"warning": SYNTHETIC_WARNING} if synthetic else {}),
    }


# ---------------------------------------------------------------- Grad-CAM picture


def _colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8, a perceptually ordered blue -> red ramp (no matplotlib needed)."""
    stops = np.array([[0.0, 0, 0, 0.5], [0.25, 0, 0.4, 1.0], [0.5, 0.1, 0.9, 0.6],
                      [0.75, 1.0, 0.85, 0.0], [1.0, 0.9, 0.05, 0.0]])
    v = np.clip(values, 0, 1)
    rgb = np.stack([np.interp(v, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def heatmap_png(image: np.ndarray, cam: np.ndarray, *, display_size: int | None = None, alpha: float = 0.45) -> bytes:
    """The model's view of the image (after preprocessing) with the Grad-CAM heatmap blended over it,
    at the model's resolution unless ``display_size`` asks for more (clients scale it; encoding
    4x the pixels cost more than the model's forward pass)."""
    gray = np.repeat(image[..., None], 3, axis=-1).astype(np.float32)
    heat = _colormap(cam).astype(np.float32)
    weight = alpha * np.clip(cam, 0, 1)[..., None] ** 0.5  # cold regions stay mostly grayscale
    blended = (gray * (1 - weight) + heat * weight).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(blended, "RGB")
    if display_size and img.size[0] < display_size:
        img = img.resize((display_size, display_size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=False)
    return buf.getvalue()


class BackgroundLane:
    """One thread at the lowest CPU priority (nice 19) for work that must not slow the screening
    path: with 2 cores busy explaining, the kernel still gives ``/predict`` its CPU first.
    Callers await :meth:`run`; waiting work holds no API thread."""

    NICE = 19

    def __init__(self, name: str = "cxr-background"):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=self._lower_priority)

    @classmethod
    def _lower_priority(cls) -> None:
        try:  # Linux: a thread's niceness is its own (the native thread id is a process id here)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), cls.NICE)
        except (AttributeError, OSError) as exc:  # other systems: same order of work, no priority
            log.info("background lane keeps normal priority (%s)", exc)

    async def run(self, fn, *args):
        import asyncio

        return await asyncio.wrap_future(self._pool.submit(fn, *args))


def explanation(model: ServedModel, image: np.ndarray) -> dict:
    """Prediction (the same model file and forward pass as /predict) plus the Grad-CAM overlay
    as a base64 PNG."""
    cam, probability = model.explain(image)
    return {
        **model.answer(probability),
        "heatmap_png_base64": base64.b64encode(heatmap_png(image, cam)).decode("ascii"),
        "heatmap": {"method": "Grad-CAM (class activation map)", "layer": "out_relu",
                    # all zero: no region pushed the score towards PNEUMONIA (common for NORMAL answers)
                    "empty": bool(np.max(cam) <= 0),
                    "shows": "the preprocessed image the model saw (grayscale, squashed to "
                             f"{model.imaging.image_size} px, intensity {model.imaging.intensity})"},
    }


def predict_many(model: ServedModel, items: list[bytes | None], errors: dict | None = None) -> dict:
    """Batch answer: one result per item, in order (``index``); a bad item gets its own error and
    status, the others are scored in one TFLite call. An ``errors`` dict, if given, receives each
    refused item's RequestError by index (for the audit trail's reason codes)."""
    errors = {} if errors is None else errors
    if not items:
        raise RequestError("no images: send one or more files in the multipart field 'images'", 400)
    if len(items) > MAX_BATCH_IMAGES:
        raise RequestError(f"too many images: {len(items)} (limit {MAX_BATCH_IMAGES} per request)", 413,
                           "too_many_images")
    arrays, results = [], []
    for index, data in enumerate(items):
        try:
            arrays.append((index, decode(data, model.imaging, what=f"image {index}")))
            results.append(None)
        except RequestError as exc:
            errors[index] = exc
            results.append({"index": index, **exc.to_dict()})
    if arrays:
        probs, refusals = model.screen(np.stack([a for _, a in arrays]))
        for (index, _), p, refusal in zip(arrays, probs, refusals):
            results[index] = {"index": index, **(refusal.to_dict() if refusal else model.answer(float(p)))}
            if refusal:
                errors[index] = refusal
    failed = sum(1 for r in results if "error" in r)
    return {"results": results, "count": len(results), "failed": failed,
            "model_tag": model.tag, "notice": SCREENING_NOTICE}
