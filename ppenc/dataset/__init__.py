"""Client-side encryption of a whole dataset tree (``ppenc-encrypt-dataset``).

The modules, each with one job (each imports only those listed before it):

- :mod:`ppenc.dataset.paths`: path safety of SRC and DST, atomic writes, control files;
- :mod:`ppenc.dataset.manifest`: the manifest schema, its one reader, and the journal;
- :mod:`ppenc.dataset.images`: image headers (size, EXIF, pixel limit) and PNG encoding;
- :mod:`ppenc.dataset.plan`: scanning SRC into work items and skipped files;
- :mod:`ppenc.dataset.report`: the run summary and the progress bar;
- :mod:`ppenc.dataset.pool`: writing one output, in this process or a fork pool;
- :mod:`ppenc.dataset.writer`: :func:`encrypt_dataset` (locking, reruns, the run).

Importing it needs numpy and the standard library only (Pillow, OpenCV and tqdm are
imported when a run needs them).
"""
from ppenc.dataset.images import DEFAULT_MAX_PIXELS, LOSSY_FORMATS, check_output_format
from ppenc.dataset.manifest import MANIFEST_NAME, TIME_FIELDS, read_manifest
from ppenc.dataset.plan import (
                                IMAGE_EXTENSIONS,
                                LAYOUTS,
                                DatasetPlan,
                                SkippedFile,
                                WorkItem,
                                plan_dataset,
)
from ppenc.dataset.report import EncryptionSummary
from ppenc.dataset.writer import encrypt_dataset
from ppenc.errors import DatasetEncryptionError, DatasetWriteError

__all__ = ['DEFAULT_MAX_PIXELS', 'LAYOUTS', 'MANIFEST_NAME', 'check_output_format',
           'encrypt_dataset', 'plan_dataset', 'read_manifest', 'DatasetEncryptionError',
           'DatasetWriteError', 'EncryptionSummary', 'DatasetPlan', 'WorkItem',
           'SkippedFile', 'TIME_FIELDS', 'IMAGE_EXTENSIONS', 'LOSSY_FORMATS']
