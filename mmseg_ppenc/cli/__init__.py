"""Command-line tools of the mmseg plugin: one module per tool, each with ``build_parser()``
and ``main(argv=None) -> int`` (``ppenc-train``, ``ppenc-test``, ``ppenc-infer``,
``ppenc-visualize``, ``ppenc-convert-timm``, ``ppenc-encrypt-model``, ``ppenc-check``).

They share the error conventions of the client tools in :mod:`ppenc.cli` (one
``error: ...`` line, exit status 2 for bad input, 1 for a failed run).
"""
