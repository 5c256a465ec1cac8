"""Finding the secret key in files: configs, logs and other run artefacts.

The scan matches *classes* of encodings, not a list of them. Content is first normalised
into a handful of views, and every view is searched for every 64-bit piece of the key
material; formatting (whitespace, line breaks, brackets, quotes, separators, letter case,
alignment, byte order) is removed by the normalisation, so any layout of one encoding is
found, not only the layouts someone thought of.

Key material (the *needles*):

- the 32 key bytes, forwards and backwards (both byte orders), read at stride 1 to 4 (so a
  key split into halves, chunks or interleaved across two to four fields is found from
  any one of its parts);
- the same bytes as signed ``int8`` values;
- the block permutation and its inverse for every block size in use, forwards and
  backwards, at stride 1 to 4.

A *piece* is the shortest run that carries at least 64 bits: 8 key bytes, 10 signed
bytes (whose absolute values carry 7 bits each), or ``ceil(64 / log2(n))`` entries of a
permutation of ``n`` values (7 for 16x16x3 blocks). Chance matches of 64 bits do not
occur in practice (about one in ``2**64 / #pieces`` per position).

Views searched for the key bytes (8-byte pieces, every byte offset):

- the raw bytes, the text read as UTF-8 and written one byte per character (a latin-1
  string holding the key), and the text with its escape sequences (``\\x8f``,
  ``\\u008f``, ``\\217``, ``\\n``) resolved, level by level up to four levels (a
  string repr'd inside a string inside a config dump);
- hex: every hex digit of the content in order, everything else dropped, at both nibble
  alignments, also read backwards (the hex string reversed);
- base64 (standard and URL-safe), base32 (either case), base85 and Ascii85: every
  character of the alphabet in order, everything else dropped, decoded at every
  alignment of the 4-, 8- or 5-character group;
- bit strings (runs of ``0``/``1`` with separators), at every bit alignment;
- every integer of at least 17 decimal digits (``1_234`` grouping allowed) or any
  ``0x``/``0o``/``0b`` integer, as big-endian bytes (little-endian ones are the reversed
  key, which is a needle too).

The decoders above and the integer views below read both the content as written and the
content with every escape resolved (a repr'd line break would otherwise put an ``n`` into
a digit stream).

Views searched for integer sequences (key byte values, permutation entries):

- every integer of the content, in order, whatever lies between them: decimal, ``0x``,
  ``0o`` and ``0b`` tokens (signs dropped, integral floats such as ``143.`` or
  ``143.0`` as integers, other floats as breaks);
- every bare hex token of at most 4 digits (``8f a0 ...``, ``2fe, 1a3``), in order.

Only file paths are reported, never what was found.
"""
from __future__ import annotations

import binascii
import math
import os
import os.path as osp
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from ppenc.keys import SecretKey

__all__ = ['PIECE_BITS', 'STRIDES', 'find_key_material', 'text_contains_key',
           'data_contains_key', 'find_bytes_values', 'KeyScanner']

#: Bits of key material that count as a leak.
PIECE_BITS = 64
#: Strides at which the key and permutations are read (interleavings of up to 4 fields).
STRIDES = (1, 2, 3, 4)
_BYTE_PIECE = PIECE_BITS // 8

# Rolling hash of integer windows (wrap-around uint64 arithmetic; a collision is checked
# exactly before a hit is reported).
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_BREAK = np.uint64((1 << 64) - 1)  # a value no needle holds: floats, huge integers


def _lut(alphabet: bytes, values: Optional[Sequence[int]] = None) -> np.ndarray:
    """A 256-entry table from byte to digit value (255 for bytes outside the alphabet)."""
    table = np.full(256, 255, dtype=np.uint8)
    for i, c in enumerate(alphabet):
        table[c] = i if values is None else values[i]
    return table


def _complement(alphabet: bytes) -> bytes:
    return bytes(sorted(set(range(256)) - set(alphabet)))


_NOT_HEX = _complement(b'0123456789abcdefABCDEF')
_NOT_B64 = _complement(b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_')
_URLSAFE_TO_STD = bytes.maketrans(b'-_', b'+/')
_B32_ALPHA = b'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'
_B32 = _lut(_B32_ALPHA + _B32_ALPHA[:26].lower(), list(range(32)) + list(range(26)))
_B85 = _lut(b'0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
            b'!#$%&()*+-;<=>?@^_`{|}~')
_A85 = _lut(bytes(range(33, 118)))
_BITS = _lut(b'01')

# Integer tokens: decimal (an integral float such as ``143.`` or ``143.0`` counts as its
# integer), 0x/0o/0b. Runs of them with non-alphanumeric separators are what the integer
# view reads; the minimum run length is that of the shortest piece.
_INT = rb'(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|\d+(?:\.0*(?![0-9]))?)'
_INT_TOKEN = re.compile(rb'0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|\d+')
_SEP = rb'[^0-9A-Za-z.]{1,64}'
_HEX_TOKEN = rb'[0-9a-fA-F]{1,4}'
_BIG_INT = re.compile(rb'(?<![0-9A-Za-z])(?:\d[\d_]{16,}|0[xX][0-9a-fA-F_]{16,}'
                      rb'|0[oO][0-7_]{22,}|0[bB][01_]{64,})')
_BIT_RUN = re.compile(rb'(?:[01][^0-9A-Za-z]{0,3}){64,}')
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


def _digits(data: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The digit values of the bytes of ``data`` in ``table``'s alphabet, others dropped."""
    values = table[data]
    return values[values != 255]


def _regroup(digits: np.ndarray, bits: int, group: int) -> Iterator[np.ndarray]:
    """Bytes of a digit stream (``bits`` per digit, ``group`` digits per whole number of
    bytes), once for every alignment of the group."""
    nbytes = bits * group // 8
    for start in range(min(group, len(digits))):
        usable = (len(digits) - start) // group * group
        if usable == 0:
            break
        chunk = digits[start:start + usable].reshape(-1, group).astype(np.uint64)
        word = np.zeros(len(chunk), dtype=np.uint64)
        for j in range(group):
            word = (word << np.uint64(bits)) | chunk[:, j]
        out = np.empty((len(chunk), nbytes), dtype=np.uint8)
        for j in range(nbytes):
            out[:, j] = (word >> np.uint64(8 * (nbytes - 1 - j))) & np.uint64(0xFF)
        yield out.reshape(-1)


def _base85(digits: np.ndarray) -> Iterator[np.ndarray]:
    """Bytes of a base-85 digit stream (5 digits per 4 bytes), at every alignment."""
    for start in range(min(5, len(digits))):
        usable = (len(digits) - start) // 5 * 5
        if usable == 0:
            break
        chunk = digits[start:start + usable].reshape(-1, 5).astype(np.uint64)
        word = np.zeros(len(chunk), dtype=np.uint64)
        for j in range(5):
            word = word * np.uint64(85) + chunk[:, j]
        word &= np.uint64(0xFFFFFFFF)  # groups above 2**32 are not valid base85 anyway
        yield word.astype('>u4').view(np.uint8)


def _parse_int(token: bytes) -> int:
    """An integer token; values too large for any piece become -1 (a break)."""
    t = token.lower()
    base = {b'0x': 16, b'0o': 8, b'0b': 2}.get(t[:2], 10)
    digits = t[2:] if base != 10 else t
    return int(digits, base) if len(digits) <= 18 else -1


def _int_to_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), 'big')


class KeyScanner:
    """Everything derived from one key that the scan looks for, ready to search content.

    Build one per key and reuse it across files: deriving the permutations is the costly
    part of a small scan.

    Args:
        key (SecretKey): The key.
        block_sizes (Sequence[int]): Block sizes whose permutations are searched for.
            Defaults to ``(16,)``.
    """

    def __init__(self, key: SecretKey, block_sizes: Sequence[int] = (16,)) -> None:
        k = key._key  # the key bytes stay inside this object; only hits leave it
        pieces = set()
        for seq in (k, k[::-1]):
            for sub in _strided(list(seq)):
                pieces.update(bytes(sub[i:i + _BYTE_PIECE])
                              for i in range(len(sub) - _BYTE_PIECE + 1))
        self._byte_piece_set = frozenset(pieces)
        self._first_pair = np.zeros(1 << 16, dtype=bool)
        self._second_pair = np.zeros(1 << 16, dtype=bool)
        for piece in pieces:
            self._first_pair[piece[0] | piece[1] << 8] = True
            self._second_pair[piece[2] | piece[3] << 8] = True
        # Integer sequences, grouped by the piece length that carries PIECE_BITS.
        sequences = [(list(k), 256), ([abs(b - 256 if b > 127 else b) for b in k], 129)]
        for b in sorted({int(b) for b in block_sizes}):
            perm = [int(v) for v in key.block_permutation(b)]
            inv = [0] * len(perm)
            for i, p in enumerate(perm):
                inv[p] = i
            sequences += [(perm, len(perm)), (inv, len(perm))]
        self._int_pieces: Dict[int, np.ndarray] = {}
        exact: Dict[int, set] = {}
        for seq, n in sequences:
            width = math.ceil(PIECE_BITS / math.log2(n))
            for s in (seq, seq[::-1]):
                for sub in _strided(s):
                    for i in range(len(sub) - width + 1):
                        exact.setdefault(width, set()).add(tuple(sub[i:i + width]))
        for width, windows in exact.items():
            arr = np.array(sorted(windows), dtype=np.uint64)
            self._int_pieces[width] = np.unique(_window_hash(arr, width, rows=True))
        self._int_exact = exact
        reps = min(exact) - 1
        self._int_run = re.compile(rb'(?<![0-9A-Za-z.])' + _INT + rb'(?:' + _SEP + _INT
                                   + rb'){%d,}' % reps)
        self._hex_run = re.compile(rb'(?<![0-9A-Za-z_])' + _HEX_TOKEN + rb'(?:[^0-9A-Za-z]'
                                   rb'{1,8}' + _HEX_TOKEN + rb'){%d,}(?![0-9A-Za-z_])' % reps)

    # ---------------------------------------------------------------- byte views
    def _bytes_hit(self, view: np.ndarray) -> bool:
        """Whether 8 consecutive bytes of ``view`` are a piece of the key, at any offset."""
        if len(view) < _BYTE_PIECE:
            return False
        # Two 16-bit table look-ups per position (bytes 0-1 and 2-3 of the piece) leave
        # about one candidate in 10**4; only those are compared exactly.
        for parity in (0, 1):
            part = view[parity:]
            words = part[:len(part) // 2 * 2].view('<u2')
            if len(words) < _BYTE_PIECE // 2:
                continue
            cand = self._first_pair[words[:-1]] & self._second_pair[words[1:]]
            for j in np.flatnonzero(cand):
                i = parity + 2 * int(j)
                if view[i:i + _BYTE_PIECE].tobytes() in self._byte_piece_set:
                    return True
        return False

    @staticmethod
    def _texts(data: bytes) -> List[bytes]:
        """The content as bytes, as latin-1 text, and with its escape sequences resolved
        (level by level, as often as strings were repr'd inside strings, up to 4)."""
        out = [data]
        text = data.decode('utf-8', errors='replace')
        if not text.isascii():
            out.append(text.encode('latin-1', errors='replace'))
        for _ in range(4):
            if '\\' not in text:
                break
            text = _unescape(text)
            out.append(text.encode('latin-1', errors='replace'))
        return out

    def _byte_views(self, texts: List[bytes]) -> Iterator[np.ndarray]:
        for text in texts:
            yield np.frombuffer(text, dtype=np.uint8)
        # The decoders read the content as written and with every escape resolved (a
        # repr'd newline would otherwise put an ``n`` into a base64 or digit stream).
        for data in dict.fromkeys((texts[0], texts[-1])):
            yield from self._decoded_views(data)

    def _decoded_views(self, data: bytes) -> Iterator[np.ndarray]:
        raw = np.frombuffer(data, dtype=np.uint8)
        hex_digits = data.translate(None, _NOT_HEX).lower()
        for digits in (hex_digits, hex_digits[::-1]):
            for start in (0, 1):
                usable = (len(digits) - start) // 2 * 2
                yield np.frombuffer(binascii.unhexlify(digits[start:start + usable]), np.uint8)
        b64_digits = data.translate(_URLSAFE_TO_STD, _NOT_B64)
        for start in range(4):
            usable = (len(b64_digits) - start) // 4 * 4
            yield np.frombuffer(binascii.a2b_base64(b64_digits[start:start + usable]),
                                np.uint8)
        yield from _regroup(_digits(raw, _B32), 5, 8)
        yield from _base85(_digits(raw, _B85))
        yield from _base85(_digits(raw, _A85))
        for m in _BIT_RUN.finditer(data):
            yield from _regroup(_digits(np.frombuffer(m.group(0), np.uint8), _BITS), 1, 8)
        big = []
        for m in _BIG_INT.finditer(data):
            token = m.group(0).replace(b'_', b'').lower()
            base = {b'0x': 16, b'0o': 8, b'0b': 2}.get(token[:2], 10)
            big.append(_int_to_bytes(int(token[2:] if base != 10 else token, base)))
        if big:
            yield np.frombuffer(b'\0'.join(big), dtype=np.uint8)

    # ---------------------------------------------------------------- integer views
    def _integers(self, texts: List[bytes]) -> Iterator[np.ndarray]:
        """Runs of integers (and of short bare hex tokens) separated by non-alphanumerics,
        in the content as written and with every escape resolved."""
        for data in dict.fromkeys((texts[0], texts[-1])):
            for m in self._int_run.finditer(data):
                yield np.array([_parse_int(t) for t in _INT_TOKEN.findall(m.group(0))],
                               dtype=np.int64)
            for m in self._hex_run.finditer(data):
                yield np.array([int(t, 16) for t in re.findall(_HEX_TOKEN, m.group(0))],
                               dtype=np.int64)

    def _ints_hit(self, values: np.ndarray) -> bool:
        v = values.astype(np.uint64)
        v[values < 0] = _BREAK
        for width, table in self._int_pieces.items():
            if len(v) < width:
                continue
            codes = _window_hash(v, width)
            found = np.nonzero(np.isin(codes, table))[0]
            for i in found:  # confirm exactly: a hash collision is not a leak
                if tuple(int(x) for x in values[i:i + width]) in self._int_exact[width]:
                    return True
        return False

    # ---------------------------------------------------------------- public
    def contains(self, data: bytes) -> bool:
        """Whether ``data`` holds a 64-bit piece of the key material in any view."""
        texts = self._texts(data)
        if any(self._bytes_hit(v) for v in self._byte_views(texts)):
            return True
        return any(self._ints_hit(v) for v in self._integers(texts))


def _strided(seq: List[int]) -> Iterator[List[int]]:
    for stride in STRIDES:
        for start in range(stride):
            yield seq[start::stride]


def _window_hash(values: np.ndarray, width: int, rows: bool = False) -> np.ndarray:
    """Hash of every ``width``-long window of ``values`` (or of each row, ``rows=True``)."""
    with np.errstate(over='ignore'):
        if rows:
            out = np.zeros(len(values), dtype=np.uint64)
            for j in range(width):
                out = out * _HASH_MUL + values[:, j] + np.uint64(1)
            return out
        out = np.zeros(len(values) - width + 1, dtype=np.uint64)
        for j in range(width):
            out = out * _HASH_MUL + values[j:len(values) - width + 1 + j] + np.uint64(1)
        return out


def data_contains_key(data: bytes, key: SecretKey,
                      block_sizes: Sequence[int] = (16,)) -> bool:
    """Whether ``data`` holds the key (or its permutations) in any form the scan knows.

    Args:
        data (bytes): File content.
        key (SecretKey): The key.
        block_sizes (Sequence[int]): Block sizes whose permutations are searched for.
            Defaults to ``(16,)``.
    """
    return KeyScanner(key, block_sizes).contains(data)


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
    scanner = KeyScanner(key, block_sizes)
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
            if scanner.contains(data):
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
