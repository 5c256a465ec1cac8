"""mmseg's own backbone checks, run on the stock classes and on the encrypted variants.

A package so that its modules (``upstream.test_vit``, ``upstream.conftest``, ...) do not
clash with same-named modules elsewhere under ``tests/``: without it, pytest would import
this directory's ``conftest.py`` as the top-level ``conftest`` that other test modules
import ``REPO`` and ``tiny_config`` from.
"""
