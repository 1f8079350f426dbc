"""Image bytes -> model input: THE preprocessing (:mod:`.preprocess`), DICOM decoding
(:mod:`.dicom`), and what both share below them (:mod:`.primitives`: the refusal, the decode
limits, the window to 8 bits).

Imports only the foundation modules at the top of :mod:`cxr`; every layer above reads images
through here.
"""
