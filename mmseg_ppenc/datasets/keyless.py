"""The dataset wrapper of keyless server runs on offline-encrypted trees."""
from __future__ import annotations

import inspect
import os.path as osp
import re
from typing import Optional, Union

from mmengine.dataset import BaseDataset
from mmseg.registry import DATASETS

from mmseg_ppenc.transforms.policy import check_keyless_pipeline
from ppenc.dataset.manifest import MANIFEST_NAME, read_manifest
from ppenc.errors import DatasetEncryptionError, KeylessPipelineError
from ppenc.meta import CIPHER_NAME

__all__ = ['KeylessEncryptedDataset', 'load_manifest']

_REUPLOAD = ('It was damaged or written by something else: on the client, rerun '
             'tools/encrypt_dataset.py and upload the whole tree again, manifest included.')


def load_manifest(data_root: str, manifest_path: Optional[str] = None) -> dict:
    """Read and validate the manifest of an encrypted tree.

    Parsing and shape checks are those of :func:`ppenc.dataset.manifest.read_manifest`
    (the one reader, which the client uses too), so both sides accept and refuse the same
    files; only the server's own rules (this cipher, a finished tree) are checked here.

    Args:
        data_root (str): The dataset's ``data_root``.
        manifest_path (str, optional): Explicit manifest path. Defaults to None
            (``data_root/ppenc_manifest.json``).

    Raises:
        KeylessPipelineError: missing, unreadable, malformed (valid JSON of the wrong
            shape, such as ``{"files": "x"}`` or ``[1, 2, 3]``), foreign or incomplete
            manifest. The message names the file and the fix.
    """
    path = manifest_path or osp.join(data_root or '', MANIFEST_NAME)
    if not osp.isfile(path):
        raise KeylessPipelineError(
            f'No {MANIFEST_NAME} at {path!r}: a keyless server only trains on trees made '
            'by `tools/encrypt_dataset.py` (on the client, with the key). Point data_root '
            'at the uploaded encrypted tree.')
    try:
        manifest = read_manifest(osp.dirname(path), path, fix=_REUPLOAD)
    except DatasetEncryptionError as e:
        raise KeylessPipelineError(str(e)) from None
    if manifest.get('cipher') != CIPHER_NAME:
        raise KeylessPipelineError(
            f'{path} is not an mmseg_ppenc dataset manifest for cipher {CIPHER_NAME} '
            f'(format={manifest.get("format")!r}, cipher={manifest.get("cipher")!r}).')
    if not manifest.get('complete'):
        raise KeylessPipelineError(
            f'The encrypted tree at {data_root!r} is incomplete (its manifest says '
            'complete=false: encrypt_dataset was interrupted). Rerun '
            'tools/encrypt_dataset.py on the client and upload the finished tree.')
    return manifest


# --------------------------------------------------------------------------- dataset
@DATASETS.register_module()
class KeylessEncryptedDataset:
    """Wrap a dataset of an offline-encrypted tree and enforce keyless training rules.

    Before the wrapped dataset (and so its pipeline) is built, this reads
    ``data_root/ppenc_manifest.json`` and runs :func:`check_keyless_pipeline`, so a
    misconfigured server run fails as soon as the Runner builds its dataloaders. Indexing,
    ``len`` and ``metainfo`` are those of the wrapped dataset.

    Args:
        dataset (dict | BaseDataset): The dataset config (e.g. ``CityscapesDataset`` with
            ``data_root`` at the encrypted tree) or a built dataset.
        manifest_path (str, optional): Manifest location. Defaults to None
            (``<data_root>/ppenc_manifest.json``).

    Attributes:
        manifest (dict): The tree's manifest (fingerprint, block size, flip flag, ...).
    """

    def __init__(self, dataset: Union[dict, BaseDataset],
                 manifest_path: Optional[str] = None) -> None:
        if isinstance(dataset, dict):
            data_root = dataset.get('data_root')
            pipeline = dataset.get('pipeline', [])
            ds_cls = DATASETS.get(dataset.get('type'))
            img_suffix = dataset.get('img_suffix', _default(ds_cls, 'img_suffix'))
        else:
            data_root = getattr(dataset, 'data_root', None)
            pipeline = getattr(getattr(dataset, 'pipeline', None), 'transforms', [])
            img_suffix = getattr(dataset, 'img_suffix', None)
            ds_cls = type(dataset)
        self.manifest = load_manifest(data_root, manifest_path)
        check_keyless_pipeline(pipeline, self.manifest, where='pipeline')
        if isinstance(img_suffix, str) and not img_suffix.lower().endswith('.png'):
            raise KeylessPipelineError(
                f'{getattr(ds_cls, "__name__", ds_cls)} reads images with '
                f'img_suffix={img_suffix!r}, but encrypted trees store every image as '
                f'lossless PNG; set img_suffix={re.sub(r"[.][^.]*$", ".png", img_suffix)!r} '
                'in the dataset config.')
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset

    @property
    def metainfo(self) -> dict:
        """The wrapped dataset's metainfo (classes, palette)."""
        return self.dataset.metainfo

    @property
    def pipeline(self):
        """The wrapped dataset's pipeline."""
        return self.dataset.pipeline

    def full_init(self) -> None:
        """Fully initialise the wrapped dataset."""
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def get_data_info(self, idx: int) -> dict:
        """The wrapped dataset's data info."""
        return self.dataset.get_data_info(idx)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        return self.dataset[idx]

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(key_fingerprint={self.manifest["key_fingerprint"]}, '
                f'block_size={self.manifest["block_size"]}, dataset='
                f'{type(self.dataset).__name__}, len={len(self)})')


def _default(cls, name: str):
    if cls is None:
        return None
    try:
        p = inspect.signature(cls.__init__).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return p.default if p is not None and p.default is not p.empty else None
