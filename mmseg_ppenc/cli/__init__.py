"""Command-line entry points: one module per tool, each with ``build_parser()`` and
``main(argv=None) -> int``.

``pyproject.toml`` installs them as console scripts (``ppenc-keygen``, ``ppenc-train``,
...), and ``tools/<name>.py`` in a checkout are thin shims over the same ``main``.
User errors print one ``error: ...`` line on stderr and exit with 2 (bad input or usage)
or 1 (the run failed); they never show a traceback.

This package imports nothing heavy: each tool imports torch/mmseg inside ``main`` only
when it needs them, so ``--help`` stays fast.
"""
import sys

__all__ = ['fail', 'user_errors', 'USAGE_ERROR', 'RUN_FAILED']

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

    Imported when called, not with this package: they pull in mmengine.

    Returns:
        tuple[type, ...]: The plugin's exception classes (config, key, model encryption).
    """
    from mmseg_ppenc.keys import InvalidKeyError
    from mmseg_ppenc.runner import ConfigError
    errors = [ConfigError, InvalidKeyError]
    try:  # the common base of the plugin's exceptions, where this version has one
        from mmseg_ppenc.core.errors import PpencError
        errors.append(PpencError)
    except ImportError:
        pass
    return tuple(errors)
