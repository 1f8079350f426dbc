"""BentoML service for the promoted chest X-ray model: a screening aid, not a diagnosis.

APIs (POST, multipart or JSON): ``/predict`` (one image), ``/predict_batch`` (several),
``/explain`` (prediction + Grad-CAM heatmap PNG), ``/metadata`` (the model card); and
``/predict_raw`` (POST the image file itself as the body: /predict's answer for less CPU).
Health: ``/healthz`` (the served model, and whether it is synthetic), ``/livez``, ``/readyz``, ``/metrics`` (BentoML's, with the cxr_* metrics of
cxr/serve/audit.py). Web page: ``/ui/``. Every image answered or refused is one line of the audit
trail (``$CXR_AUDIT``, :mod:`cxr.serve.audit`); every response carries ``X-Request-ID``.

Everything that is not BentoML plumbing lives in :mod:`cxr.serve.serving`, :mod:`cxr.serve.decoding`
and :mod:`cxr.serve.explain`, shared with the Lambda handler; preprocessing is
:func:`cxr.imaging.preprocess.preprocess_bytes`, as in training.

Which model: ``$CXR_MODEL_TAG`` if set, else the promoted one (the registry's alias file
under ``$BENTOML_HOME/aliases/``), else -- inside a built bento, whose store holds only the
model it was built with -- the single ``cxr-pneumonia`` model in the store. None of these:
the service refuses to start, with a message saying how to promote one.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import bentoml
from starlette.responses import JSONResponse

from cxr import UserError
from cxr.ops.registry import MODEL_NAME, bentoml_home, promoted_tag, verify
from cxr.records.model_card import ModelCard
from cxr.serve import audit, bentoml_patches, decoding, explain, serving
from cxr.serve.asgi import MAX_CONNECTIONS, BodyLimit, Health, RequestId
from cxr.serve.openapi import OpenAPIContract

log = logging.getLogger("cxr.service")
UI_DIR = Path(__file__).resolve().parent / "ui"
# Chosen by bench/serving.py on 2 cores at concurrency 32 with original-size JPEGs (figures in
# docs/performance.md): 2 worker processes, 4 API threads and 1 TFLite thread each; 3 workers,
# more or fewer API threads and adaptive batching were no better.
TFLITE_THREADS = int(os.environ.get("CXR_TFLITE_THREADS", "1"))
# numpy's BLAS (the not-a-chest-X-ray detector's one matrix-vector product per image) on one
# thread: its default pool of one thread per core, in each worker and API thread, spun against
# LiteRT and each other under load (bench/serving.py, docs/performance.md).
BLAS_THREADS = int(os.environ.get("CXR_BLAS_THREADS", "1"))
API_THREADS = int(os.environ.get("CXR_API_THREADS", "4"))
WORKERS = int(os.environ.get("CXR_WORKERS", "2"))


def resolve_model_tag() -> str:
    tag = os.environ.get("CXR_MODEL_TAG") or promoted_tag()
    if tag:
        return tag
    try:
        stored = bentoml.models.list(MODEL_NAME)
    except bentoml.exceptions.NotFound:
        stored = []
    if len(stored) == 1:  # a built bento: its store holds exactly the model it was built with
        return str(stored[0].tag)
    raise UserError(
        f"no promoted {MODEL_NAME} model in the BentoML store at {bentoml_home()} "
        f"({len(stored)} stored, none promoted): run the pipeline so a model passes the gate "
        f"(make run), promote one with 'python -m cxr.ops.registry rollback TAG', or set CXR_MODEL_TAG"
    )


try:
    MODEL_TAG = resolve_model_tag()
    STORED = verify(MODEL_TAG)  # the files are the ones promoted (sha256), or no start
    HEALTH = serving.health(MODEL_TAG, ModelCard.read(STORED.path))
    AUDIT = audit.AuditConfig.from_env()  # $CXR_AUDIT: where the audit trail goes (cxr/serve/audit.py)
except UserError as exc:  # fail fast, with the reason, before any worker starts
    print(f"cxr service: cannot start: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


# ------------------------------------------------------------------ protocol-level safety

bentoml_patches.apply()  # file fields never fetch URLs; malformed forms are 400s (cxr/serve/bentoml_patches.py)


def _error(exc: decoding.RequestError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def _read(path: Optional[Path]) -> Optional[bytes]:
    return None if path is None else Path(path).read_bytes()


# ------------------------------------------------------------------ the service


@bentoml.service(
    name="cxr_screening",
    workers=WORKERS,
    threads=API_THREADS,
    traffic={"timeout": 60, "max_concurrency": MAX_CONNECTIONS},
    labels={"project": "cxr-screening", "notice": "screening aid, not a diagnosis"},
)
class CXRScreening:
    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        if BLAS_THREADS > 0:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=BLAS_THREADS, user_api="blas")
        stored = bentoml.models.get(MODEL_TAG)
        self.model = serving.ServedModel.load(stored.path, tag=str(stored.tag), tflite_threads=TFLITE_THREADS)
        self.url_policy = decoding.UrlPolicy.from_env()
        self.explain_lane = explain.BackgroundLane("cxr-explain")
        self.audit = audit.Audit(AUDIT)
        log.info("serving %s (imaging %s, threshold %s); URL fetching %s", self.model.tag,
                 self.model.imaging.to_dict(), self.model.threshold,
                 f"allowed for {list(self.url_policy.allowlist)}" if self.url_policy.allowlist else "off")

    def _image_bytes(self, image: Optional[Path], url: Optional[str]) -> bytes:
        if image is not None and url:
            raise decoding.RequestError("send either a file 'image' or a JSON 'url', not both", 400)
        if image is None and not url:
            raise decoding.RequestError(
                "no image: send the file in the multipart field 'image' (or JSON {\"url\": ...} if enabled)", 400)
        if image is not None:
            return _read(image)
        try:
            return decoding.fetch_url(url, self.url_policy)
        except decoding.RequestError as exc:
            raise audit.url_refusal(exc) from None

    def _image(self, image: Optional[Path], url: Optional[str], record: audit.Record):
        return decoding.decode(record.input(self._image_bytes(image, url)), self.model.imaging)

    # Each image route writes its audit lines and counts its metrics through an audit.Record
    # (cxr/serve/audit.py): answered, refused, or (an unexpected exception) a server error.

    @bentoml.api
    def predict(self, image: Path = None, url: str = "") -> dict:  # type: ignore[assignment]
        """One JPEG/PNG/DICOM chest X-ray -> label, probability, decision threshold, model tag, notice;
        a 422 for what is not a chest X-ray.

        (``POST /predict_raw`` answers the same for the file itself as the request body.)"""
        with self.audit.begin("/predict", self.model.tag) as record:
            try:
                return record.answer(self.model.predict_bytes(record.input(self._image_bytes(image, url))))
            except decoding.RequestError as exc:
                return _error(record.refuse(exc))

    @bentoml.api
    def predict_batch(self, images: list[Path]) -> dict:
        """Several images in one call; each gets its own result or its own error."""
        with self.audit.begin("/predict_batch", self.model.tag) as record:
            try:
                errors: dict = {}
                answer = serving.predict_many(self.model, record.inputs([_read(p) for p in images]), errors)
                return record.batch(answer, errors)
            except decoding.RequestError as exc:
                return _error(record.refuse(exc))

    @bentoml.api
    async def explain(self, image: Path = None, url: str = "") -> dict:  # type: ignore[assignment]
        """The prediction plus a Grad-CAM heatmap over the preprocessed image (base64 PNG).

        Computed in the background lane (one low-priority thread per worker), so explanations
        queue behind each other, not in front of /predict."""
        with self.audit.begin("/explain", self.model.tag) as record:  # the request id is read here, not in the lane
            try:
                return record.answer(await self.explain_lane.run(
                    lambda: explain.explanation(self.model, self._image(image, url, record))))
            except decoding.RequestError as exc:
                return _error(record.refuse(exc))

    @bentoml.api
    def metadata(self) -> dict:
        """The model card, threshold, imaging config and lineage of the served model."""
        return self.model.model_card()


CXRScreening.add_asgi_middleware(RequestId)  # first: X-Request-ID on every response, the others' refusals too
CXRScreening.add_asgi_middleware(Health, status=HEALTH)  # /healthz: what is served (synthetic or not)
CXRScreening.add_asgi_middleware(BodyLimit, max_bytes=decoding.MAX_REQUEST_BYTES)
CXRScreening.add_asgi_middleware(OpenAPIContract)  # /docs.json says what the service really does


# ------------------------------------------------------------------ /predict_raw

# Bodies meant for /predict: refused with a pointer. (curl --data-binary says
# x-www-form-urlencoded: accepted, as any other type, since the bytes are sniffed.)
_NOT_RAW = ("multipart/", "application/json")
_raw_limiter = None


async def predict_raw(request):
    """``POST /predict_raw``: the image file itself is the body; the same answer as ``/predict``.

    Skips BentoML's multipart parsing, temporary file and schema validation, which cost about
    a third of a request's CPU outside the model (docs/performance.md). The body is capped by
    BodyLimit like every other; the format is sniffed from the bytes, never taken from the
    client's Content-Type."""
    import anyio

    global _raw_limiter
    service = bentoml.get_current_service()
    with service.audit.begin("/predict_raw", service.model.tag) as record:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith(_NOT_RAW):
            return _error(record.refuse(decoding.RequestError(
                "/predict_raw takes the image file itself as the request body (Content-Type image/jpeg, image/png, "
                f"application/dicom or application/octet-stream), not {content_type}: send forms and JSON to "
                "/predict", 415)))
        body = await request.body()
        if _raw_limiter is None:  # created in the event loop; as many threads as the BentoML APIs get
            _raw_limiter = anyio.CapacityLimiter(API_THREADS)
        try:  # the input's sha256 too is computed in the thread, not the event loop
            answer = await anyio.to_thread.run_sync(lambda: service.model.predict_bytes(record.input(body)),
                                                    limiter=_raw_limiter)
        except decoding.RequestError as exc:
            return _error(record.refuse(exc))
        return JSONResponse(record.answer(answer))


def _ui_app():
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return Starlette(routes=[Mount("/", app=StaticFiles(directory=UI_DIR, html=True), name="ui")])


def _raw_app():
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/predict_raw", predict_raw, methods=["POST"])])


CXRScreening.mount_asgi_app(_ui_app(), path="/ui", name="ui")
CXRScreening.mount_asgi_app(_raw_app(), path="/", name="predict_raw")
