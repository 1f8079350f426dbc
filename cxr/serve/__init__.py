"""Serving the exported model: request/response logic (:mod:`.serving`), the ASGI middleware,
the OpenAPI contract, the audit trail, the Lambda handler and the BentoML patches.

The top layer: nothing in :mod:`cxr` imports it.
"""
