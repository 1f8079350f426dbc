"""The explanation of one image: the Grad-CAM heatmap (:meth:`cxr.serve.serving.ServedModel.explain_all`,
from the same LiteRT pass as the prediction) blended over the image the model saw, as a PNG (and,
with a PNEUMONIA answer's subtype, the subtype head's own heatmap for the subtype it answered),
and the lane that computes explanations without slowing ``/predict``."""

from __future__ import annotations

import base64
import io
import logging
import os
import threading

import numpy as np
from PIL import Image

from cxr import SUBTYPES
from cxr.serve.serving import ServedModel

log = logging.getLogger(__name__)


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
    as a base64 PNG; with a subtype in the answer, the subtype head's Grad-CAM towards the subtype
    answered (``subtype_heatmap_png_base64``)."""
    from cxr.model.runtime import subtype_map

    cam, probability, p_bacterial, subtype_cam = model.explain_all(image)
    shows = ("the preprocessed image the model saw (grayscale, squashed to "
             f"{model.imaging.image_size} px, intensity {model.imaging.intensity})")
    out = {
        **model.answer(probability, p_bacterial),
        "heatmap_png_base64": base64.b64encode(heatmap_png(image, cam)).decode("ascii"),
        "heatmap": {"method": "Grad-CAM (class activation map)", "layer": "out_relu",
                    # all zero: no region pushed the score towards PNEUMONIA (common for NORMAL answers)
                    "empty": bool(np.max(cam) <= 0), "shows": shows},
    }
    subtype = out.get("subtype")
    if subtype is not None and subtype_cam is not None:
        towards = subtype_map(subtype_cam, image.shape[0], bacterial=subtype["label"] == SUBTYPES[0])
        out["subtype_heatmap_png_base64"] = base64.b64encode(heatmap_png(image, towards)).decode("ascii")
        out["subtype_heatmap"] = {"method": "Grad-CAM (class activation map) of the subtype head", "layer": "out_relu",
                                  "towards": subtype["label"], "empty": bool(np.max(towards) <= 0), "shows": shows}
    return out
