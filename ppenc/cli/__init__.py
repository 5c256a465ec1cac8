"""Client-side command-line tools, and the error conventions every tool shares.

One module per tool, each with ``build_parser()`` and ``main(argv=None) -> int``:
``ppenc-keygen`` (:mod:`.keygen`), ``ppenc-encrypt-dataset`` (:mod:`.encrypt_dataset`) and
``ppenc-make-synthetic`` (:mod:`.make_synthetic_cityscapes`). ``pyproject.toml`` installs
them as console scripts, and ``tools/<name>.py`` in a checkout are thin shims over the same
``main``. They import :mod:`ppenc` only, never torch or mmseg, so they start fast on the
data owner's machine. The server-side tools are in :mod:`mmseg_ppenc.cli`.

User errors print one ``error: ...`` line on stderr and exit with 2 (bad input or usage)
or 1 (the run failed); they never show a traceback.
"""
import sys

__all__ = ['fail', 'user_errors', 'missing_environment', 'USAGE_ERROR', 'RUN_FAILED']

#: Exit status for bad input or usage (as argparse uses).
USAGE_ERROR = 2
#: Exit status for a run that started and failed.
RUN_FAILED = 1


def fail(message: object, code: int = USAGE_ERROR) -> int:
    """Print ``error: <message>`` on stderr and return the exit status.

    Args:
        message (object): What went wrong and how to fix it (never key material).
        code (int): Exit status to return. Defaults to :data:`USAGE_ERROR` (2).

    Returns:
        int: ``code``, for ``return fail(...)`` in a ``main``.
    """
    print(f'error: {message}', file=sys.stderr)
    return code


def user_errors() -> tuple:
    """The exception classes that mean "bad input", reported without a traceback.

    Returns:
        tuple[type, ...]: :class:`ppenc.errors.PpencError`, the base of every
        plugin error (config, key, grid, model and dataset encryption).
    """
    from ppenc.errors import PpencError
    return (PpencError,)


def missing_environment(modules=('torch', 'mmengine', 'mmseg')) -> int:
    """Check that the heavy dependencies import; report a broken environment once.

    Args:
        modules (Sequence[str]): Modules a tool needs. Defaults to torch, mmengine, mmseg.

    Returns:
        int: 0 when all import, else the exit status after printing an ``error:`` line
        that names the module and how to set the environment up.
    """
    import importlib
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001  (any failure means a broken install)
            return fail(f'cannot import {name} ({type(e).__name__}: {e}). The environment '
                        'is incomplete: run `bash tools/setup_env.sh` and use '
                        '.venv/bin/python.', RUN_FAILED)
    return 0
