"""File identity: whether two paths name the same file, however they are spelled.

Tools that refuse to overwrite their input compare files, not path strings: a symlink,
a hard link, ``..`` or a bind mount reach the same file under another name, and a check
of ``abspath`` lets the output replace the input.
"""
from __future__ import annotations

import os
from typing import Type, Union

__all__ = ['same_file', 'check_output_path']

PathLike = Union[str, 'os.PathLike[str]']


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file (same device and inode).

    Paths are followed through symlinks; a hard link is the same file. A path that does
    not exist is the same file as nothing, except that two spellings of one not yet
    existing path (``out.pth`` and ``./x/../out.pth``, or through a symlinked
    directory) are the same.

    Args:
        a (str | PathLike): A path.
        b (str | PathLike): Another path.
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(src: PathLike, dst: PathLike, force: bool = False,
                      made: str = 'the output', error: Type[Exception] = ValueError) -> None:
    """Refuse an output path that would replace its input, or an existing file.

    The guards of every tool that writes one file from another (model encryption,
    checkpoint conversion), so their rules and messages are the same.

    Args:
        src (str | PathLike): The input file, which must survive.
        dst (str | PathLike): The output path.
        force (bool): Allow replacing an existing ``dst`` (never ``src``). Defaults to
            False.
        made (str): What is written, e.g. ``'the encrypted model'``. Defaults to
            ``'the output'``.
        error (type): Exception class to raise. Defaults to ``ValueError``.

    Raises:
        error: ``dst`` is ``src`` (through a link or another spelling of the path), or
            exists and ``force`` is False.
    """
    if same_file(src, dst):
        raise error(f'IN {src} and OUT {dst} are the same file (through a link or another '
                    f'spelling of the path); write {made} to a new path and keep the input.')
    if os.path.exists(dst) and not force:
        raise error(f'{dst} already exists; pass --force to overwrite it.')
