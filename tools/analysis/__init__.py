"""Measurement drivers behind the scripts in ``tools/`` (benchmark, profile, end to end,
Table I, security report, block-size privacy).

They belong to the repository, not to the installed ``mmseg_ppenc`` package: they read
the checkout's configs and write reports.

How it is imported (one way only):

- ``analysis`` is a package whose parent folder is ``tools/``. Its modules import each
  other with relative imports only (``from .common import markdown_table``), never by
  a bare module name, never through ``tools.analysis``, and none of them changes
  ``sys.path`` or can be run as a file.
- Every command is a thin shim ``tools/<command>.py`` that puts the repository root (for
  ``mmseg_ppenc`` and ``ppenc`` of the checkout) and ``tools/`` first on ``sys.path``,
  imports ``main`` from its ``analysis`` module and calls it: ``tools/benchmark.py``
  (:mod:`analysis.benchmark`), ``tools/benchmark_e2e.py`` (:mod:`analysis.e2e`),
  ``tools/gpu_report.py`` (:mod:`analysis.gpu_report`), ``tools/collect_table.py``,
  ``tools/reproduce_table.py``, ``tools/analyze_security.py``
  (:mod:`analysis.security_report`), ``tools/analyze_block_sizes.py``
  (:mod:`analysis.block_size_privacy`) and ``tools/benchmark_leak_scan.py``
  (:mod:`analysis.leak_scan_report`).
- Tests do the same: ``sys.path.insert(0, 'tools')``, then ``from analysis import X``.

Shared names (the grid's tuples, the benchmark's variants and switches, paths, timing
and table helpers) live in :mod:`analysis.common`; no module imports another's
``_private`` names, and the intra-package imports form no cycle
(``tests/tools/test_analysis_layout.py`` checks both, and that every file stays under
600 lines).
"""
