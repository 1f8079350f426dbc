"""The data set: where it comes from (:mod:`.sources`), its manifest, its validation, the
patient-level split and the cached split arrays, and the generated not-a-chest-X-ray images.

Imports the foundation and :mod:`cxr.imaging`, nothing above.
"""
