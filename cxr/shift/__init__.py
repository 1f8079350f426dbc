"""Acquisition shift: how each class's films were acquired (:mod:`.acquisition`), re-acquired
copies and the stress test (:mod:`.robustness`), and the shortcut audit (:mod:`.shortcuts`).

Below the model: training re-acquires its views through :mod:`.robustness`.
"""
