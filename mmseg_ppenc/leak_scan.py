"""Finding the secret key in files: configs, logs and other run artefacts."""
from __future__ import annotations

import os
import os.path as osp
from typing import Iterable, List, Optional

from .keys import SecretKey

__all__ = ['find_key_material', 'text_contains_key']


def find_key_material(paths: Iterable[str], key: SecretKey,
                      max_bytes: Optional[int] = None) -> List[str]:
    """Files (searched recursively) that contain the key's bytes, hex or base64.

    Args:
        paths (Iterable[str]): Files or directories.
        key (SecretKey): The key to look for.
        max_bytes (int, optional): Skip files larger than this. Defaults to None (all).

    Returns:
        list[str]: Offending file paths (never the key itself).
    """
    forms = key.material_forms()
    hits = []
    for path in paths:
        files = [path] if osp.isfile(path) else [
            osp.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            try:
                if max_bytes is not None and osp.getsize(f) > max_bytes:
                    continue
                with open(f, 'rb') as fh:
                    data = fh.read()
            except OSError:
                continue
            low = data.lower()
            if any(form in data or form.lower() in low for form in forms):
                hits.append(f)
    return hits


def text_contains_key(text: str, key: SecretKey) -> bool:
    """Whether ``text`` (e.g. a config dump) contains the key in any form the scan knows."""
    low = text.lower()
    return any(f.decode('latin-1').lower() in low for f in key.material_forms())
