"""What a run reports: the :class:`EncryptionSummary` and the progress bar.

The summary lists every skipped file under its reason, the outputs removed or withdrawn,
the extra files copied and the warnings; file names and link targets are shown, file
content never is. The progress bar (tqdm, on stderr) is the only output during a run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, List

from ppenc.dataset.plan import SkippedFile, listing

__all__ = ['EncryptionSummary', 'progress_bar']


@dataclass
class EncryptionSummary:
    """What a run did (all counts are of this run, except the ``total_*`` ones).

    Attributes:
        images_encrypted (int): Images encrypted now.
        images_skipped (int): Images whose output already existed.
        files_copied (int): Label maps and included files written now.
        files_skipped (int): Copies whose output already existed.
        images_padded (int): Images padded to the grid (whole tree).
        labels_padded (int): Label maps padded to the grid (whole tree).
        bytes_written (int): Bytes written now.
        seconds (float): Wall time.
        key_fingerprint (str): Fingerprint of the key used.
        manifest (str): Path of the manifest.
        stale_removed (int): Partial files of an interrupted run deleted now.
        changed (int): Outputs written again because their source changed.
        unvouched (int): Existing outputs the manifest does not vouch for (written by an
            interrupted run before it recorded them, or altered since), written again.
        rescanned (int): Existing copies recorded by an older version, which did not
            scan for key material, scanned and written again.
        removed (list[str]): Outputs deleted because their source is gone.
        withdrawn (list[str]): Outputs deleted because their source is now skipped (a
            key file, key material, a link, no longer named by an include pattern).
        skipped (list[SkippedFile]): Every file of SRC not in DST, with the reason.
        extra_files (list[str]): Files in DST because an include pattern names them
            (whole tree, not only this run's).
        warnings (list[str]): Things to look at that did not stop the run (a damaged
            journal, files in DST this tool did not write, plain images included).
    """
    images_encrypted: int = 0
    images_skipped: int = 0
    files_copied: int = 0
    files_skipped: int = 0
    images_padded: int = 0
    labels_padded: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    key_fingerprint: str = ''
    manifest: str = ''
    stale_removed: int = 0
    changed: int = 0
    unvouched: int = 0
    rescanned: int = 0
    removed: List[str] = field(default_factory=list)
    withdrawn: List[str] = field(default_factory=list)
    skipped: List[SkippedFile] = field(default_factory=list)
    extra_files: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Encryption throughput of this run."""
        return self.images_encrypted / self.seconds if self.seconds > 0 else 0.0

    def format(self, warnings: bool = True) -> str:
        """A human-readable multi-line summary.

        Every skipped file is listed under its reason; file names and link targets are
        shown, file content never is.

        Args:
            warnings (bool): Append the warnings as ``warning: ...`` lines. Defaults to
                True (the command-line tool prints them on stderr instead).
        """
        mb = self.bytes_written / 1e6
        lines = [
            f'Encrypted {self.images_encrypted} images ({self.images_skipped} already '
            f'done), copied {self.files_copied} files ({self.files_skipped} already done) '
            f'in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s, '
            f'{mb:.1f} MB written.',
            f'Key fingerprint: {self.key_fingerprint}. Manifest: {self.manifest}',
        ]
        if self.images_padded or self.labels_padded:
            lines.append(f'Padded to the block grid: {self.images_padded} images, '
                         f'{self.labels_padded} label maps.')
        if self.stale_removed:
            lines.append(f'Removed {self.stale_removed} partial file(s) of an interrupted '
                         'run.')
        if self.changed:
            lines.append(f'Source changed since the last run: {self.changed} output(s) '
                         'written again.')
        if self.unvouched:
            lines.append(f'{self.unvouched} existing output(s) not vouched for by the '
                         'manifest (interrupted or altered) were written again.')
        if self.rescanned:
            lines.append(f'{self.rescanned} copied file(s) recorded by an older version '
                         'were scanned for key material and written again.')
        if self.removed:
            shown = ', '.join(self.removed[:5])
            more = f' and {len(self.removed) - 5} more' if len(self.removed) > 5 else ''
            lines.append(f'Removed {len(self.removed)} output(s) whose source is gone: '
                         f'{shown}{more}.')
        if self.withdrawn:
            lines.append(f'Removed {len(self.withdrawn)} output(s) from DST whose source is '
                         'now skipped (reasons below):\n' + listing(self.withdrawn))
        if self.extra_files:
            lines.append(f'DST holds {len(self.extra_files)} extra file(s) named by '
                         '--include (scanned, no key material):\n'
                         + listing(self.extra_files))
        if self.skipped:
            lines.append(f'Skipped {len(self.skipped)} file(s) of SRC; they are not in DST:')
            by_reason: Dict[str, List[str]] = {}
            for s in self.skipped:
                by_reason.setdefault(s.reason, []).append(str(s))
            for reason, names in by_reason.items():
                lines.append(f'  {reason}:\n' + listing(names, indent='    '))
        if warnings:
            lines += [f'warning: {w}' for w in self.warnings]
        return '\n'.join(lines)


def progress_bar(total: int, enabled: bool):
    """A tqdm bar on stderr counting written outputs.

    Args:
        total (int): Outputs this run writes.
        enabled (bool): Show it; a disabled bar accepts the same calls and prints
            nothing.

    Returns:
        tqdm.tqdm: The bar (``update``, ``close``).
    """
    # Imported here: tqdm is needed only while a run writes, not to import ppenc.
    from tqdm import tqdm
    return tqdm(total=total, unit='file', desc='encrypting', disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)
