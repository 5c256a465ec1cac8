"""File identity: whether two paths name the same file, however they are spelled.

Tools that refuse to overwrite their input compare files, not path strings: a symlink,
a hard link, ``..`` or a bind mount reach the same file under another name, and a check
of ``abspath`` lets the output replace the input.
"""
from __future__ import annotations

import os
from typing import Union

__all__ = ['same_file']

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
