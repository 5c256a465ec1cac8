"""Secret keys: generation, key files, fingerprints and permutation derivation.

A key is 32 random bytes. Everything the cipher needs (the block permutation) is derived
from it with HMAC-SHA256 in counter mode under a distinct label per use, followed by a
Fisher-Yates shuffle with rejection sampling. Unlike NumPy's ``Generator`` streams or
``random.shuffle``, this derivation is specified here bit for bit, so one key gives the
same permutation on every machine and every library version (golden vectors pin it in
``tests/test_keys.py``).

Key bytes never leave this module in readable form: ``repr()``, ``str()`` and every error
message show the :attr:`SecretKey.fingerprint` only, and key files are written readable by
their owner alone. Configs name a key *file* (or leave ``key_file=None`` so that the
environment variable :data:`KEY_ENV_VAR` selects it), never the bytes, because mmengine
copies the whole config into the work_dir, the log and every checkpoint.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
from typing import Optional, Union

import numpy as np

from ppenc.errors import InvalidKeyError

__all__ = [
    'KEY_ENV_VAR', 'KEY_BYTES', 'ALLOW_OPEN_KEY_ENV_VAR', 'InvalidKeyError', 'SecretKey',
    'resolve_key', 'flip_compatible_permutation', 'looks_like_key_bytes', 'is_key_file'
]

#: Environment variable holding the path of the key file used when ``key_file=None``.
KEY_ENV_VAR = 'PPENC_KEY_FILE'
#: Length of a key in bytes.
KEY_BYTES = 32
#: Set to ``1`` to accept a key file that other users can read (a warning remains).
ALLOW_OPEN_KEY_ENV_VAR = 'PPENC_ALLOW_OPEN_KEY'

_MAGIC = b'PPENCKEY'
_VERSION = 1
_FLAG_FLIP = 0x01
_CHECK_BYTES = 8
# magic | version | flags | key | sha256(magic..key)[:8]
_FILE_LEN = len(_MAGIC) + 2 + KEY_BYTES + _CHECK_BYTES

_HOW_TO_MAKE = ('Create one with `python tools/keygen.py KEYFILE` and select it with '
                f'`export {KEY_ENV_VAR}=KEYFILE` (or pass key_file=KEYFILE).')




PathLike = Union[str, 'os.PathLike[str]']


class SecretKey:
    """A 256-bit secret key for block-wise image encryption.

    Args:
        key_bytes (bytes): Exactly 32 bytes.
        flip_compatible (bool): Derive block permutations that commute with the in-block
            horizontal mirror, so that horizontal flips can be applied to encrypted images
            by a server without the key. Defaults to False.

    Use :meth:`generate` to make a new key and :meth:`load` / :meth:`save` for key files.
    """

    __slots__ = ('_key', '_flip', '_fingerprint', '_perm_cache')

    def __init__(self, key_bytes: bytes, flip_compatible: bool = False) -> None:
        if not isinstance(key_bytes, (bytes, bytearray)):
            raise TypeError(f'key_bytes must be bytes, got {type(key_bytes).__name__}')
        if len(key_bytes) != KEY_BYTES:
            raise InvalidKeyError(f'A key must be {KEY_BYTES} bytes long, got {len(key_bytes)}.')
        self._key = bytes(key_bytes)
        self._flip = bool(flip_compatible)
        self._fingerprint = hmac.new(self._key, b'mmseg_ppenc/fingerprint/v1',
                                     hashlib.sha256).hexdigest()[:16]
        self._perm_cache: dict = {}

    # ------------------------------------------------------------------ creation / files
    @classmethod
    def generate(cls, flip_compatible: bool = False) -> 'SecretKey':
        """Make a new key from the operating system's CSPRNG.

        Args:
            flip_compatible (bool): See :class:`SecretKey`. Defaults to False.
        """
        return cls(secrets.token_bytes(KEY_BYTES), flip_compatible=flip_compatible)

    def save(self, path: PathLike) -> None:
        """Write the key to a new file readable and writable by its owner only (0600).

        Args:
            path (str | PathLike): Destination. It must not exist yet.

        Raises:
            FileExistsError: ``path`` exists; a key file is never overwritten, since the
                data encrypted with the old key would be lost.
        """
        path = os.fspath(path)
        body = _MAGIC + bytes([_VERSION, _FLAG_FLIP if self._flip else 0]) + self._key
        body += hashlib.sha256(body).digest()[:_CHECK_BYTES]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise FileExistsError(
                f'Key file {path!r} already exists; refusing to overwrite it (data '
                'encrypted with that key would become unreadable). Choose another '
                'path or delete the old key deliberately.') from None
        with os.fdopen(fd, 'wb') as f:
            f.write(body)
        # O_CREAT's mode is filtered by the umask; make 0600 explicit.
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: PathLike, allow_open: Optional[bool] = None) -> 'SecretKey':
        """Read a key file written by :meth:`save` (or ``tools/keygen.py``).

        Like ssh with a private key, a key file that other users can read (any group or
        other permission bit) is refused: whoever read it has the key.

        Args:
            path (str | PathLike): The key file.
            allow_open (bool, optional): Accept a file that others can read, with a
                warning. Defaults to None: ``$PPENC_ALLOW_OPEN_KEY=1`` accepts it.

        Raises:
            InvalidKeyError: the file is missing, not a regular file (a FIFO, a device),
                readable by others, unreadable, truncated, corrupt or not a key file. The
                message says what was found and what was expected.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise InvalidKeyError(f'Key file {path!r} does not exist. {_HOW_TO_MAKE}')
        if os.path.isdir(path):
            raise InvalidKeyError(f'Key file {path!r} is a directory, expected a key file. '
                            f'{_HOW_TO_MAKE}')
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; anything but a
            # regular file is refused below, before a single byte is read.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOCTTY', 0))
        except PermissionError:
            raise InvalidKeyError(f'Key file {path!r} is not readable by this user; '
                            'run as its owner or check its permissions.') from None
        with os.fdopen(fd, 'rb') as f:
            _check_key_file_stat(path, os.fstat(f.fileno()), allow_open)
            body = f.read(_FILE_LEN + 1)
        if not body.startswith(_MAGIC):
            raise InvalidKeyError(f'{path!r} is not an mmseg_ppenc key file (it does not start '
                            f'with the {_MAGIC.decode()} header). {_HOW_TO_MAKE}')
        if len(body) != _FILE_LEN:
            raise InvalidKeyError(f'Key file {path!r} is {len(body)} bytes long, expected '
                            f'{_FILE_LEN}: it is truncated or corrupt.')
        version, flags = body[len(_MAGIC)], body[len(_MAGIC) + 1]
        if version != _VERSION:
            raise InvalidKeyError(f'Key file {path!r} has format version {version}, this '
                            f'version of mmseg_ppenc reads version {_VERSION}.')
        payload, check = body[:-_CHECK_BYTES], body[-_CHECK_BYTES:]
        if not hmac.compare_digest(hashlib.sha256(payload).digest()[:_CHECK_BYTES], check):
            raise InvalidKeyError(f'Key file {path!r} is corrupt (checksum mismatch); restore '
                            'it from a backup.')
        if flags & ~_FLAG_FLIP:
            raise InvalidKeyError(f'Key file {path!r} has unknown flags {flags:#04x}.')
        return cls(payload[len(_MAGIC) + 2:], flip_compatible=bool(flags & _FLAG_FLIP))

    # ----------------------------------------------------------------- properties
    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying the key (an HMAC of a fixed label); safe to log."""
        return self._fingerprint

    @property
    def flip_compatible(self) -> bool:
        """Whether derived block permutations commute with the in-block mirror."""
        return self._flip

    def __repr__(self) -> str:
        flip = ', flip_compatible=True' if self._flip else ''
        return f'SecretKey(fingerprint={self._fingerprint}{flip})'

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SecretKey)
                and hmac.compare_digest(self._key, other._key)
                and self._flip == other._flip)

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __reduce__(self):
        # Dataloader workers receive pipelines by pickling; a key must never be pickled
        # into anything that might be written to disk, so only the file path travels
        # (see resolve_key); direct pickling is refused.
        raise TypeError('SecretKey objects are not picklable; pass the key file path.')

    def material_forms(self) -> list:
        """Encodings of the key bytes that must never appear in a work_dir.

        Returns:
            list[bytes]: The raw bytes and their hex and base64 encodings.
        """
        import base64
        k = self._key
        forms = [k, k.hex().encode(), k.hex().upper().encode()]
        for enc in (base64.b64encode, base64.urlsafe_b64encode, base64.b32encode):
            e = enc(k)
            forms += [e, e.rstrip(b'=')]
        return forms

    # ------------------------------------------------------------- derivation
    def stream(self, label: bytes, nbytes: int) -> bytes:
        """Pseudo-random bytes: HMAC-SHA256(key, label || counter_be32) for counter 0, 1, ...

        Args:
            label (bytes): Domain separation label; every use has its own.
            nbytes (int): Number of bytes.
        """
        out = bytearray()
        counter = 0
        while len(out) < nbytes:
            out += hmac.new(self._key, label + struct.pack('>I', counter),
                            hashlib.sha256).digest()
            counter += 1
        return bytes(out[:nbytes])

    def permutation(self, n: int, label: str) -> np.ndarray:
        """A uniformly random permutation of ``0..n-1`` derived from the key and ``label``.

        Fisher-Yates from the last position down, each index drawn as a big-endian
        uint32 from the HMAC counter stream with rejection sampling (no modulo bias).

        Args:
            n (int): Length of the permutation.
            label (str): Domain separation label (e.g. ``'block/16'``).

        Returns:
            np.ndarray: int64 array ``p`` with ``sorted(p) == range(n)`` (read-only).
        """
        cache_key = (n, label)
        perm = self._perm_cache.get(cache_key)
        if perm is None:
            perm = _fisher_yates(self._word_stream(f'mmseg_ppenc/perm/v1/{label}'), n)
            perm.setflags(write=False)
            self._perm_cache[cache_key] = perm
        return perm

    def _word_stream(self, label: str):
        """Yield uint32 words from the HMAC counter stream under ``label``."""
        lab = label.encode()
        counter = 0
        while True:
            block = hmac.new(self._key, lab + struct.pack('>I', counter),
                             hashlib.sha256).digest()
            counter += 1
            yield from struct.unpack('>8I', block)

    def block_permutation(self, block_size: int, channels: int = 3) -> np.ndarray:
        """The block permutation ``pi`` used by the cipher for ``block_size``.

        ``enc_block[k] = plain_block[pi[k]]`` with block values flattened in
        (channel, y, x) order. For a flip-compatible key, ``pi`` commutes with the
        in-block horizontal mirror.

        Args:
            block_size (int): Block side in pixels (the ViT patch size).
            channels (int): Channels per pixel. Defaults to 3.
        """
        n = channels * block_size * block_size
        if not self._flip:
            return self.permutation(n, f'block/c{channels}/b{block_size}')
        cache_key = ('flip', block_size, channels)
        perm = self._perm_cache.get(cache_key)
        if perm is None:
            perm = flip_compatible_permutation(
                self._word_stream(f'mmseg_ppenc/perm/v1/flipblock/c{channels}/b{block_size}'),
                block_size, channels)
            perm.setflags(write=False)
            self._perm_cache[cache_key] = perm
        return perm


def _uniform_below(words, bound: int) -> int:
    """Uniform integer in ``[0, bound)`` from uint32 words by rejection sampling."""
    limit = (1 << 32) - ((1 << 32) % bound)
    while True:
        w = next(words)
        if w < limit:
            return w % bound


def _fisher_yates(words, n: int) -> np.ndarray:
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = _uniform_below(words, i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return np.asarray(perm, dtype=np.int64)


def mirror_index(block_size: int, channels: int = 3) -> np.ndarray:
    """Index map of the in-block horizontal mirror on (channel, y, x)-flattened blocks."""
    idx = np.arange(channels * block_size * block_size).reshape(channels, block_size,
                                                                block_size)
    return idx[:, :, ::-1].reshape(-1).copy()


def flip_compatible_permutation(words, block_size: int, channels: int = 3) -> np.ndarray:
    """A random permutation commuting with the in-block mirror ``M``.

    The mirror pairs every position ``p`` with ``M(p)`` (block sides are even, so there
    are no fixed points). A permutation commutes with ``M`` iff it maps pairs to pairs,
    so it is a permutation of the ``n/2`` pairs plus one orientation bit per pair:
    ``(n/2)! * 2^(n/2)`` choices (about 2^3132 for 16x16x3 blocks).

    Args:
        words (Iterator[int]): uint32 source (from the key's HMAC stream).
        block_size (int): Block side; must be even.
        channels (int): Channels. Defaults to 3.
    """
    if block_size % 2:
        raise ValueError(f'Flip-compatible keys need an even block size, got {block_size}.')
    mirror = mirror_index(block_size, channels)
    n = mirror.size
    reps = np.array([p for p in range(n) if p < mirror[p]], dtype=np.int64)
    pair_perm = _fisher_yates(words, reps.size)
    perm = np.empty(n, dtype=np.int64)
    for i, rep in enumerate(reps):
        src = reps[pair_perm[i]]
        if next(words) & 1:
            src = mirror[src]
        perm[rep] = src
        perm[mirror[rep]] = mirror[src]
    return perm


def _check_key_file_stat(path: str, st: os.stat_result,
                         allow_open: Optional[bool] = None) -> None:
    """Refuse a key file that is not a regular file, or that others can read."""
    if not stat.S_ISREG(st.st_mode):
        kind = ('a FIFO' if stat.S_ISFIFO(st.st_mode) else
                'a socket' if stat.S_ISSOCK(st.st_mode) else
                'a device' if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                'not a regular file')
        raise InvalidKeyError(f'Key file {path!r} is {kind}, expected a regular key file. '
                              f'{_HOW_TO_MAKE}')
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        if allow_open is None:
            allow_open = os.environ.get(ALLOW_OPEN_KEY_ENV_VAR, '') == '1'
        msg = (f'Key file {path!r} is readable or writable by other users (mode '
               f'{mode:o}, expected 600)')
        if not allow_open:
            raise InvalidKeyError(f'{msg}: anyone who read it has the key. Restrict it with '
                                  f'`chmod 600 {path}` (and rotate the key if others may '
                                  f'have read it), or set {ALLOW_OPEN_KEY_ENV_VAR}=1 to '
                                  'accept it anyway.')
        import warnings
        warnings.warn(f'{msg}; accepted because {ALLOW_OPEN_KEY_ENV_VAR}=1. Restrict it '
                      'with chmod 600.')


def looks_like_key_bytes(data: bytes) -> bool:
    """Whether ``data`` starts like a key file (the ``PPENCKEY`` header).

    Any key file, of any key and format version, starts with the header; nothing is
    parsed or validated beyond it, so a truncated or corrupt key file counts too.

    Args:
        data (bytes): The first bytes of a file (at least 8 to match).

    Returns:
        bool: True if ``data`` begins with the key file header.
    """
    return bytes(data[:len(_MAGIC)]) == _MAGIC


def is_key_file(path: PathLike) -> bool:
    """Whether ``path`` is a key file, judged by its header (see :func:`looks_like_key_bytes`).

    Reads at most 8 bytes. A symbolic link is followed. Anything but a regular file (a
    directory, FIFO, socket or device) is not a key file and is not read, so the call
    never blocks.

    Args:
        path (str | PathLike): The file.

    Returns:
        bool: True if the file starts with the key file header.

    Raises:
        OSError: the file exists but cannot be opened or read (e.g. permission denied),
            so the caller can tell "not a key file" from "could not look".
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOCTTY', 0))
    except FileNotFoundError:
        return False
    with os.fdopen(fd, 'rb') as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return False
        return looks_like_key_bytes(f.read(len(_MAGIC)))


_LOADED: dict = {}


def resolve_key(key_file: Optional[PathLike] = None) -> SecretKey:
    """Load the key named by ``key_file`` or, if None, by ``$PPENC_KEY_FILE``.

    Loaded keys are cached per (path, mtime, size) so that pipelines in many dataloader
    workers do not reread the file for every sample.

    Args:
        key_file (str | PathLike, optional): Key file path. Defaults to None, which reads
            the path from the environment variable ``PPENC_KEY_FILE``.

    Raises:
        InvalidKeyError: no key is selected, or the file cannot be used (see
            :meth:`SecretKey.load`; ``$PPENC_ALLOW_OPEN_KEY=1`` accepts a file that other
            users can read).
    """
    if key_file is None:
        key_file = os.environ.get(KEY_ENV_VAR)
        if not key_file:
            raise InvalidKeyError(f'No encryption key selected: key_file is None and '
                            f'{KEY_ENV_VAR} is not set. {_HOW_TO_MAKE}')
    path = os.path.abspath(os.path.expanduser(os.fspath(key_file)))
    try:
        st = os.stat(path)
    except OSError:
        return SecretKey.load(path)  # raises the descriptive error
    cache_key = (path, st.st_mtime_ns, st.st_size)
    key = _LOADED.get(cache_key)
    if key is None:
        key = SecretKey.load(path)
        _LOADED[cache_key] = key
    else:  # permissions may have changed since the key was read
        _check_key_file_stat(path, st)
    return key
