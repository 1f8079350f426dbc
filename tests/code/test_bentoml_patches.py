"""What cxr/serve/bentoml_patches.py replaces inside BentoML is still there and still shaped as it was:
an upgrade that moves it fails here, loudly, instead of the patch silently missing.

(The patched behaviour itself, over real HTTP: tests/system/test_service.py, URL file fields
and malformed forms are 400s.)"""

import inspect

import pytest

from cxr.serve import bentoml_patches


def test_the_patched_targets_exist_as_expected():
    bentoml_patches.check_targets()


def test_a_changed_target_is_reported_with_what_changed(monkeypatch):
    from _bentoml_impl import serde

    def parse_request(self, request):  # a BentoML that dropped the cls argument
        return None

    monkeypatch.setattr(serde.MultipartSerde, "parse_request", parse_request)
    with pytest.raises(RuntimeError, match="MultipartSerde.parse_request"):
        bentoml_patches.check_targets()


def test_apply_replaces_both_and_is_idempotent():
    from _bentoml_impl import serde

    bentoml_patches.apply()
    first = inspect.getattr_static(serde.MultipartSerde, "parse_request")
    bentoml_patches.apply()
    assert inspect.getattr_static(serde.MultipartSerde, "parse_request") is first  # not wrapped twice
    assert first.__module__ == "cxr.serve.bentoml_patches"
    assert serde.MultipartSerde.ensure_file.__module__ == "cxr.serve.bentoml_patches"
