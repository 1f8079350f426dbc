"""Operating models once they exist: the promotion gate (:mod:`.gate`), the BentoML model store
(:mod:`.registry`), scoring an export the way the service does (:mod:`.scoring`) and drift of
the served traffic (:mod:`.drift`).
"""
