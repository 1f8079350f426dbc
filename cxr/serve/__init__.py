"""Serving the exported model: the served model and its answers (:mod:`.serving`), what a request
may send and how it is decoded (:mod:`.decoding`), the explanation picture (:mod:`.explain`), the
ASGI middleware, the OpenAPI contract, the audit trail, the Lambda handler and the BentoML patches.

The top layer: nothing in :mod:`cxr` imports it.
"""
