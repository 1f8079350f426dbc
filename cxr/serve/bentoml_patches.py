"""The only places this project changes BentoML's behaviour, in one module.

Two patches to ``_bentoml_impl.serde.MultipartSerde`` (BentoML 1.4), applied by ``service.py``
at import time:

- ``ensure_file``: BentoML fetches any URL (or reads any path) a client puts in a file form
  field; this service never does, so anything but an uploaded file is a 400.
- ``parse_request``: an unexpected form part (a binary file under an unknown field name, which
  BentoML tries to JSON-decode) or a malformed multipart body was a 500; it is a 400.

:func:`check_targets` says what the patches rely on; ``tests/code/test_bentoml_patches.py``
fails when a BentoML upgrade moves or reshapes it, instead of the patch silently missing.
"""

from __future__ import annotations

import inspect

TARGET = "_bentoml_impl.serde.MultipartSerde"
# what each patched attribute looks like in the BentoML the patches were written for
EXPECTED = {"ensure_file": ("obj",), "parse_request": ("self", "request", "cls")}


def _serde_class():
    from _bentoml_impl import serde

    return serde.MultipartSerde


def check_targets() -> None:
    """RuntimeError naming what changed when BentoML no longer has what the patches replace."""
    try:
        cls = _serde_class()
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"BentoML changed: {TARGET} is gone ({exc}); review cxr/serve/bentoml_patches.py") from None
    for name, params in EXPECTED.items():
        attr = inspect.getattr_static(cls, name, None)
        fn = attr.__func__ if isinstance(attr, staticmethod) else attr
        if fn is None or tuple(inspect.signature(fn).parameters) != params:
            raise RuntimeError(f"BentoML changed: {TARGET}.{name} is {fn!r}, expected a function of {params}; "
                               "review cxr/serve/bentoml_patches.py")
        if name == "parse_request" and not inspect.iscoroutinefunction(fn):
            raise RuntimeError(f"BentoML changed: {TARGET}.parse_request is no longer async")


def apply() -> None:
    import bentoml
    from starlette.datastructures import UploadFile

    check_targets()
    cls = _serde_class()
    if getattr(cls, "_cxr_patched", False):
        return

    async def ensure_file(obj):
        if isinstance(obj, UploadFile):
            return obj
        raise bentoml.exceptions.BadInput(
            "file fields must carry an uploaded file; this server never fetches a URL or reads a path given "
            "there (use the JSON field 'url', if the operator enabled it)")

    original_parse = cls.parse_request

    async def parse_request(self, request, cls):
        from pydantic import ValidationError

        try:
            return await original_parse(self, request, cls)
        except (bentoml.exceptions.BentoMLException, ValidationError):
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's malformed body
            raise bentoml.exceptions.BadInput(
                f"malformed multipart form ({type(exc).__name__}): send the X-ray as the file field 'image' "
                "('images' for /predict_batch)") from None

    cls.ensure_file = staticmethod(ensure_file)
    cls.parse_request = parse_request
    cls._cxr_patched = True
