"""Image bytes -> model input: THE preprocessing (:mod:`.preprocess`) and DICOM decoding (:mod:`.dicom`).

Imports only the foundation modules at the top of :mod:`cxr`; every layer above reads images
through here.
"""
