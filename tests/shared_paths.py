"""Where ../shared is (override with CXR_SHARED), and skip markers for tests that need it."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CXR_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data" / "chest_xray_224"
ORIGINALS = SHARED / "data" / "originals"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} absent")
needs_originals = pytest.mark.skipif(not ORIGINALS.is_dir(), reason=f"{ORIGINALS} absent")
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} absent")
