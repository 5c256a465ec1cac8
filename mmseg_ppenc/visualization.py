"""Figures in the style of the paper's Figs. 4 and 5: plain | encrypted | prediction | GT.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change),
so it works on headless machines and inside other programs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mmseg_ppenc.apis import colorize

__all__ = ['comparison_figure', 'save_comparison_figure']


def comparison_figure(plain: np.ndarray, encrypted: np.ndarray, prediction: np.ndarray,
                      ground_truth: Optional[np.ndarray], palette: Sequence[Sequence[int]],
                      class_names: Optional[Sequence[str]] = None,
                      title: Optional[str] = None, ignore_index: int = 255,
                      panel_width: float = 3.2, dpi: int = 100):
    """Build a one-row figure: plain image, encrypted image, prediction, ground truth.

    Args:
        plain (np.ndarray): H x W x 3 uint8 RGB plain image.
        encrypted (np.ndarray): H x W x 3 uint8 RGB encrypted image (what the server saw).
        prediction (np.ndarray): H x W label map predicted from the encrypted image.
        ground_truth (np.ndarray, optional): H x W label map; None shows an empty panel.
        palette (Sequence[Sequence[int]]): RGB colour per class.
        class_names (Sequence[str], optional): Class names; classes present in the
            prediction or ground truth get a legend entry. Defaults to None (no legend).
        title (str, optional): Figure title. Defaults to None.
        ignore_index (int): Label drawn black and left out of the legend.
            Defaults to 255.
        panel_width (float): Width of one panel in inches. Defaults to 3.2.
        dpi (int): Resolution. Defaults to 100.

    Returns:
        matplotlib.figure.Figure: The figure (not shown; see
        :func:`save_comparison_figure`).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    h, w = plain.shape[:2]
    panels = [('plain image', plain), ('encrypted (uploaded)', encrypted),
              ('prediction (from encrypted)', colorize(prediction, palette)),
              ('ground truth', None if ground_truth is None
               else colorize(ground_truth, palette))]
    present = []
    if class_names is not None:
        labels = [prediction] + ([ground_truth] if ground_truth is not None else [])
        ids = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
        present = [int(i) for i in ids if i != ignore_index and i < len(class_names)]
    legend_rows = (len(present) + 5) // 6
    panel_h = panel_width * h / w
    fig_h = panel_h + 0.35 + (0.3 if title else 0) + 0.22 * legend_rows
    fig = Figure(figsize=(panel_width * 4, fig_h), dpi=dpi)
    top = 1 - ((0.3 if title else 0) + 0.3) / fig_h
    bottom = (0.22 * legend_rows + 0.05) / fig_h
    axes = fig.subplots(1, 4, gridspec_kw=dict(left=0.01, right=0.99, top=top,
                                               bottom=bottom, wspace=0.03))
    for ax, (name, img) in zip(axes, panels):
        ax.set_axis_off()
        ax.set_title(name, fontsize=9)
        if img is None:
            ax.imshow(np.full((h, w, 3), 235, np.uint8))
            ax.text(w / 2, h / 2, 'no ground truth', ha='center', va='center', fontsize=8)
        else:
            ax.imshow(img, interpolation='nearest')
    if title:
        fig.suptitle(title, fontsize=10)
    if present:
        handles = [Patch(facecolor=np.asarray(palette[i]) / 255.0, edgecolor='none',
                         label=class_names[i]) for i in present]
        fig.legend(handles=handles, loc='lower center', ncol=min(6, len(handles)),
                   fontsize=7, frameon=False, handlelength=1.0, columnspacing=1.0)
    return fig


def save_comparison_figure(path: str, *args, **kwargs) -> str:
    """Build :func:`comparison_figure` (same arguments) and write it as PNG to ``path``.

    Returns:
        str: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = comparison_figure(*args, **kwargs)
    FigureCanvasAgg(fig)
    fig.savefig(path, format='png', dpi=fig.dpi)
    return path
