"""Finding the secret key in files: configs, logs and other run artefacts.

The scan is structural rather than a list of encodings. A file is searched for

- the key's bytes in three views of its content: the raw bytes, the text read as UTF-8
  and written back one byte per character (a latin-1 string holding the key), and the
  text with its escape sequences (``\\x8f``, ``\\u008f``, ``\\217``, ``\\n``, ...)
  resolved, once and twice (Python ``bytes``/``str`` literals, also inside JSON);
- the key's bytes as hex digits with any separators (``8f:a0:...``, ``8f a0``,
  ``8F-A0``), after dropping everything but hex digits from hex-looking runs;
- the key's bytes, and the block permutations derived from it and their inverses, as any
  sequence of integers (decimal, ``0x``/``0o``/``0b``) with any non-alphanumeric
  separators: integer runs are extracted with one regular expression and matched
  window by window.

A *window* of 16 consecutive values (half the key, or 16 consecutive permutation entries)
is enough for a hit: a partial key is a leak too, and chance matches of that length do
not occur. Only file paths are reported, never what was found.
"""
from __future__ import annotations

import base64
import os
import os.path as osp
import re
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from .keys import SecretKey

__all__ = ['WINDOW', 'find_key_material', 'text_contains_key', 'data_contains_key',
           'find_bytes_values']

#: Consecutive key bytes or permutation entries that count as a leak.
WINDOW = 16

_INT = rb'(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|\d+)'
# Separators: anything but letters, digits and the decimal point, a few characters long
# (', ', ',\n' plus indentation, ' : ', ...).
_SEP = rb'[^0-9A-Za-z.]{1,64}'
_INT_RUN = re.compile(rb'(?<![0-9A-Za-z.])' + _INT + rb'(?:' + _SEP + _INT + rb'){%d,}'
                      % (WINDOW - 1))
_INT_TOKEN = re.compile(_INT)
_HEX_RUN = re.compile(rb'(?:[0-9a-fA-F]{2}[^0-9A-Za-z]{0,3}){%d,}' % WINDOW)
_NON_HEX = re.compile(rb'[^0-9a-fA-F]')
_ESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{1,3}|.)',
                     re.DOTALL)
_SIMPLE_ESCAPES = {'n': '\n', 'r': '\r', 't': '\t', 'a': '\a', 'b': '\b', 'f': '\f',
                   'v': '\v', '0': '\0'}


def _unescape(text: str) -> str:
    def one(m: 're.Match') -> str:
        e = m.group(1)
        if e[0] in 'xuU' and len(e) > 1:
            return chr(int(e[1:], 16)) if int(e[1:], 16) < 0x110000 else m.group(0)
        if e[0] in '01234567':
            return chr(int(e, 8))
        return _SIMPLE_ESCAPES.get(e, e)  # \\ -> \, \' -> ', unknown -> itself
    return _ESCAPE.sub(one, text)


def _latin1(text: str) -> bytes:
    return text.encode('latin-1', errors='replace')


def _windows(seq: Sequence[int], width: int = WINDOW) -> Dict[Tuple[int, int], Set[int]]:
    """Positions of every adjacent pair of ``seq`` (to follow runs of matches)."""
    pairs: Dict[Tuple[int, int], Set[int]] = {}
    for i in range(len(seq) - 1):
        pairs.setdefault((int(seq[i]), int(seq[i + 1])), set()).add(i)
    return pairs


def _parse_int(tok: bytes) -> int:
    t = tok.lower()
    if t.startswith(b'0x'):
        return int(t[2:], 16)
    if t.startswith(b'0o'):
        return int(t[2:], 8)
    if t.startswith(b'0b'):
        return int(t[2:], 2)
    return int(t)


# Sequences hold values below 2**16 (key bytes, permutation entries); pairs are coded as
# a * _PAIR_BASE + b, and larger values can never match.
_PAIR_BASE = 1 << 20


def _parse_run(tokens: List[bytes]) -> np.ndarray:
    """Integer tokens as int64 (values that do not fit become a non-matching sentinel)."""
    try:
        return np.array(tokens).astype(np.int64)  # the common case: decimal only
    except (ValueError, OverflowError):
        out = [_parse_int(t) for t in tokens]
        return np.array([v if v < (1 << 62) else _PAIR_BASE for v in out], dtype=np.int64)


def _run_contains(values: List[int], pairs: Dict[Tuple[int, int], Set[int]]) -> bool:
    """Whether ``values`` holds ``WINDOW`` consecutive entries of the indexed sequence."""
    current: Set[int] = set()
    streak = 0
    for a, b in zip(values, values[1:]):
        nxt = pairs.get((a, b), set())
        cont = {i for i in nxt if i - 1 in current}
        if cont:
            streak += 1
            current = cont
        else:
            streak = 1 if nxt else 0
            current = set(nxt)
        if streak >= WINDOW - 1:
            return True
    return False


class _Needles:
    """Everything derived from one key that the scan looks for."""

    def __init__(self, key: SecretKey, block_sizes: Sequence[int]) -> None:
        k = key._key  # the key bytes stay inside this object; only hits leave it
        self.byte_windows = [k[i:i + WINDOW] for i in range(len(k) - WINDOW + 1)]
        self.hex_windows = [w.hex().encode() for w in self.byte_windows]
        self.encodings = []
        for enc in (base64.b64encode, base64.urlsafe_b64encode, base64.b32encode):
            e = enc(k)
            self.encodings += [e, e.rstrip(b'=')]
        self.sequences = [_windows(list(k))]
        for b in block_sizes:
            perm = [int(v) for v in key.block_permutation(int(b))]
            inv = [0] * len(perm)
            for i, p in enumerate(perm):
                inv[p] = i
            self.sequences += [_windows(perm), _windows(inv)]
        # Adjacent pairs of every sequence as one integer each, to find candidate runs
        # with one vectorised membership test before following them in Python.
        self.pair_codes = np.array(sorted({a * _PAIR_BASE + b for seq in self.sequences
                                           for a, b in seq}), dtype=np.int64)

    def in_data(self, data: bytes) -> bool:
        low = data.lower()
        if any(e in data or e.lower() in low for e in self.encodings):
            return True
        text = data.decode('utf-8', errors='replace')
        views = [data, _latin1(text)]
        if '\\' in text:
            once = _unescape(text)
            views.append(_latin1(once))
            if '\\' in once:
                views.append(_latin1(_unescape(once)))
        if any(w in v for v in views for w in self.byte_windows):
            return True
        for m in _HEX_RUN.finditer(data):
            digits = _NON_HEX.sub(b'', m.group(0)).lower()
            if any(w in digits for w in self.hex_windows):
                return True
        for m in _INT_RUN.finditer(data):
            values = _parse_run(_INT_TOKEN.findall(m.group(0)))
            codes = values[:-1] * _PAIR_BASE + values[1:]
            codes[(values[:-1] >= _PAIR_BASE) | (values[1:] >= _PAIR_BASE)] = -1
            if np.count_nonzero(np.isin(codes, self.pair_codes)) < WINDOW - 1:
                continue
            vals = values.tolist()
            if any(_run_contains(vals, pairs) for pairs in self.sequences):
                return True
        return False


def data_contains_key(data: bytes, key: SecretKey,
                      block_sizes: Sequence[int] = (16,)) -> bool:
    """Whether ``data`` holds the key (or its permutations) in any form the scan knows.

    Args:
        data (bytes): File content.
        key (SecretKey): The key.
        block_sizes (Sequence[int]): Block sizes whose permutations are searched for.
            Defaults to ``(16,)``.
    """
    return _Needles(key, block_sizes).in_data(data)


def find_key_material(paths: Iterable[str], key: SecretKey,
                      max_bytes: Optional[int] = None,
                      block_sizes: Sequence[int] = (16,)) -> List[str]:
    """Files (searched recursively) that contain the key in any form (module docstring).

    Args:
        paths (Iterable[str]): Files or directories.
        key (SecretKey): The key to look for.
        max_bytes (int, optional): Skip files larger than this. Defaults to None (all).
        block_sizes (Sequence[int]): Block sizes whose permutations are searched for.
            Defaults to ``(16,)``.

    Returns:
        list[str]: Offending file paths (never the key itself).
    """
    needles = _Needles(key, block_sizes)
    hits = []
    for path in paths:
        files = [path] if osp.isfile(path) else [
            osp.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            try:
                if not osp.isfile(f):  # FIFOs and devices would block or never end
                    continue
                if max_bytes is not None and osp.getsize(f) > max_bytes:
                    continue
                with open(f, 'rb') as fh:
                    data = fh.read()
            except OSError:
                continue
            if needles.in_data(data):
                hits.append(f)
    return hits


def text_contains_key(text: str, key: SecretKey, block_sizes: Sequence[int] = (16,)) -> bool:
    """Whether ``text`` (e.g. a config dump) contains the key in any form the scan knows.

    Args:
        text (str): The text.
        key (SecretKey): The key.
        block_sizes (Sequence[int]): Block sizes whose permutations are searched for.
            Defaults to ``(16,)``.
    """
    return data_contains_key(text.encode('utf-8', errors='surrogatepass'), key, block_sizes)


def find_bytes_values(node, path: str = '') -> List[str]:
    """Config paths (``model.backbone.x``, ``a[2]``) whose value is ``bytes``.

    Configs must name a key file, never hold bytes: mmengine copies the whole config into
    the work_dir, the log and every checkpoint.

    Args:
        node: A config (``mmengine.Config``, dict, list, ...).
        path (str): Path of ``node``. Defaults to ``''``.
    """
    if hasattr(node, 'to_dict') and not isinstance(node, dict):
        node = node.to_dict()
    if isinstance(node, (bytes, bytearray, memoryview)):
        return [path or '<root>']
    out: List[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += find_bytes_values(v, f'{path}.{k}' if path else str(k))
    elif isinstance(node, (list, tuple, set)):
        for i, v in enumerate(node):
            out += find_bytes_values(v, f'{path}[{i}]')
    return out
