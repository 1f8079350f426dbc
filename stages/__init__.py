"""The DVC stages: one thin CLI over the cxr package per stage of dvc.yaml."""
