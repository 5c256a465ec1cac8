"""A generator of key encodings: every class of encoding the leak scan claims to find,
in layouts drawn at random (separators, letter case, wrapping, offsets, strides).

Used by ``tests/test_leak_scan.py`` (detection rate) and ``tests/test_start_checks.py``
(every entry point refuses a config holding any of them before writing a file).
"""
import json

import numpy as np

from ppenc.keys import SecretKey


def permutation(key):
    return [int(v) for v in key.block_permutation(16)]


def inverse_permutation(key):
    return [int(v) for v in np.argsort(key.block_permutation(16))]


def generated_keys(n):
    rng = np.random.default_rng(1234)
    return [SecretKey(rng.integers(0, 256, 32, dtype=np.uint8).tobytes()) for _ in range(n)]


def _sep(rng):
    return str(rng.choice([', ', ',', ' ', ':', '-', ';\n    ', ',\n        ', ' | ', '\t']))


def _wrap(text, rng, width=None):
    """Split a long token as formatters and users do: implicit concatenation, lines."""
    width = width or int(rng.integers(8, 40))
    parts = [text[i:i + width] for i in range(0, len(text), width)]
    return str(rng.choice(['"{}"', "'{}'", '({})', '[{}]', '{}'])).format(
        str(rng.choice(["' '", '\n', '" "', '', "'\n    '"])).join(parts))


def key_encodings(key, seed=0):
    """name -> text that holds ``key`` (or a 64-bit piece of it, or of its permutation).

    The generator draws the layout at random from ``seed``: separators, letter case, line
    wrapping, where in the key or permutation a piece starts, the stride of an
    interleaving, the byte offset inside a base-N blob.
    """
    import base64
    rng = np.random.default_rng(seed)
    k = key._key
    perm = permutation(key)
    inv = inverse_permutation(key)
    off = int(rng.integers(0, 25))            # where an 8-byte chunk starts
    stride = int(rng.integers(2, 5))          # an interleaving of 2-4 fields
    pad = bytes(rng.integers(0, 256, int(rng.integers(1, 7)), dtype=np.uint8))
    pstart = int(rng.integers(0, 760))
    hexcase = str.upper if rng.random() < 0.5 else str.lower
    forms = {
        'bytes literal': repr(k),
        'bytes literal, escaped twice': repr(repr(k)),
        'latin-1 text': k.decode('latin-1'),
        'latin-1 text in json': json.dumps({'note': k.decode('latin-1')}),
        'decimal list': _sep(rng).join(map(str, k)),
        'decimal list, reversed': _sep(rng).join(map(str, k[::-1])),
        'numpy repr': repr(np.frombuffer(k, np.uint8)),
        'numpy repr in a string': repr(repr(np.frombuffer(k, np.uint8))),
        'numpy int8 repr': repr(np.frombuffer(k, np.int8)),
        'numpy float repr': repr(np.frombuffer(k, np.uint8).astype(float)),
        'torch-like repr': 'tensor(' + str(list(k)) + ', dtype=torch.uint8)',
        'int list, hex tokens': str([hex(b) for b in k]),
        'int list, octal tokens': _sep(rng).join(oct(b) for b in k),
        'int list, binary tokens': _sep(rng).join(bin(b) for b in k),
        'bare hex tokens': _sep(rng).join(f'{b:x}' for b in k),
        'hex with separators': _sep(rng).join(hexcase(f'{b:02x}') for b in k),
        'hex, wrapped': _wrap(hexcase(k.hex()), rng),
        'hex, reversed string': k.hex()[::-1],
        'hex, reversed bytes': k[::-1].hex(),
        'hex escapes': ''.join(f'\\x{b:02x}' for b in k),
        'one big integer': str(int.from_bytes(k, 'big')),
        'one big integer, little-endian': str(int.from_bytes(k, 'little')),
        'one big integer, grouped': f'{int.from_bytes(k, "big"):_}',
        'big integer in hex': hex(int.from_bytes(k, 'little')),
        'big integer in octal': oct(int.from_bytes(k, 'big')),
        'big integer in binary': bin(int.from_bytes(k, 'big')),
        'bit string': ' '.join(f'{b:08b}' for b in k),
        'base64': base64.b64encode(k).decode(),
        'base64, wrapped': _wrap(base64.b64encode(k).decode(), rng),
        'base64 at an offset': base64.b64encode(pad + k).decode(),
        'base64 url-safe, no padding': base64.urlsafe_b64encode(k).decode().rstrip('='),
        'base32': base64.b32encode(pad + k).decode(),
        'base32, lower case': base64.b32encode(k).decode().lower(),
        'base85': base64.b85encode(pad + k).decode(),
        'ascii85': base64.a85encode(k).decode(),
        'first half, hex': k[:16].hex(),
        'second half, base64': base64.b64encode(k[16:]).decode(),
        '8-byte chunk, decimal': _sep(rng).join(map(str, k[off:off + 8])),
        '8-byte chunk, hex': k[off:off + 8].hex(),
        'interleaved fields, hex': ', '.join(f'f{i}="{k[i::stride].hex()}"'
                                             for i in range(stride)),
        'interleaved fields, decimal': ', '.join(f'f{i}={list(k[i::stride])}'
                                                 for i in range(stride)),
        'interleaved fields, base64': ', '.join(
            f'f{i}="{base64.b64encode(k[i::2]).decode()}"' for i in range(2)),
        'permutation': str(perm),
        'permutation, chunk of 7': _sep(rng).join(map(str, perm[pstart:pstart + 7])),
        'permutation, reversed': str(perm[::-1]),
        'permutation, every other entry': str(perm[1::2]),
        'permutation, hex tokens': _sep(rng).join(hex(v) for v in perm[pstart:pstart + 8]),
        'permutation, numpy repr': repr(np.array(perm)),
        'inverse permutation': _sep(rng).join(map(str, inv)),
        'inverse permutation, chunk': str(inv[pstart:pstart + 7]),
    }
    return forms
