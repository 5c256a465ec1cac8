"""Model-weight attack: recover the key from an encrypted model and its public original.

The exact adaptation (:mod:`mmseg_ppenc.adaptation`) sets the encrypted patch embedding to
``E'[:, k] = E[:, pi[k]] * s[c(k)] / s[c(pi[k])]``: every column of ``E'`` is a *positive
multiple* of one column of the plain ``E``. Anyone holding the plain pre-trained weights
(timm's are public) normalises the columns of both and matches them (cosine similarity 1,
Hungarian assignment): that is the key's permutation.

This module implements the attack, the mitigations a model owner could apply before
uploading the encrypted model, and a cheap measure of what each mitigation costs:

- **noise**: add Gaussian noise to ``E'`` (relative to its RMS);
- **withhold**: upload a freshly initialised patch embedding instead of ``E'`` (the server
  then learns it from scratch during fine-tuning; the pre-training of that layer is lost);
- **hidden permutation**: a key-dependent permutation of the ViT's embedding channels,
  applied consistently to every layer. It is *exact* (the backbone computes the same
  features, in permuted channel order) but does not help: a permutation of the rows of
  ``E'`` keeps the multiset of values of every column, so matching *sorted* columns still
  recovers the key (:func:`sorted_column_attack`).

A random rotation of the embedding space (``E'' = R E'``) is not exact for mmseg's ViT:
the LayerNorm that follows subtracts a per-token mean and scales per channel, which does
not commute with a rotation; making it exact means folding the LayerNorm weights into the
next layers and rotating every residual-stream weight, and each rotated layer can be
matched against the public weights by orthogonal Procrustes, which gives the rotation back.
It is therefore not offered.

**Replay of the initialisation.** A run *without* pre-trained weights starts from a
random ViT, and every mmengine checkpoint records the full config (``meta['cfg']``) and
the seed (``meta['seed']``). Anyone holding the checkpoint rebuilds that random initial
model bit for bit and matches its patch-embedding columns against the checkpoint's
(:func:`replay_initialisation_attack`): were the random start permuted by the key, the
permutation would be read off exactly. ``EncryptedVisionTransformer`` therefore skips the
adaptation when it loads no pre-trained weights, and this attack recovers only what chance
gives. It does not apply to runs that start from pre-trained weights
(:func:`pretrained_start`): their start is not random but the public model, and the
weight-matching attack against those public weights (:func:`weight_matching_attack`,
``tools/analyze_security.py --plain-checkpoint``) recovers the whole key from any of their
checkpoints.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from mmseg_ppenc.adaptation import locate_projection
from mmseg_ppenc.convert import TIMM_MARKER
from mmseg_ppenc.core.checkpoint import read_checkpoint, read_weights, state_dict_of
from mmseg_ppenc.security.common import blocks_of
from ppenc.errors import CheckpointReadError
from ppenc.meta import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['find_patch_weight', 'patch_embedding_matrix', 'weight_matching_attack',
           'sorted_column_attack', 'add_noise_to_patch_embedding',
           'withhold_patch_embedding', 'permute_hidden_channels', 'load_state_dict',
           'pca_patch_embedding', 'backbone_features', 'relative_change', 'recovery_of',
           'replay_initial_model', 'replay_initialisation_attack',
           'replay_attack_work_dir', 'pretrained_start', 'pretrained_start_of_work_dir']

# Key-using model components and what an attacker without the key builds instead: the
# same modules with the same random-number consumption, minus the key arguments.
_KEYLESS_TWINS = {
    'EncryptedVisionTransformer': ('FastVisionTransformer', ('key_file', 'mean', 'std')),
    'EncryptedBEiT': ('BEiT', ('key_file', 'mean', 'std')),
    'EncryptedMAE': ('MAE', ('key_file', 'mean', 'std')),
    'EncryptedSwinTransformer': ('SwinTransformer', ('key_file', 'mean', 'std')),
    'EncryptedPCPVT': ('PCPVT', ('key_file', 'mean', 'std')),
    'EncryptedSVT': ('SVT', ('key_file', 'mean', 'std')),
    'EncryptedSegDataPreProcessor': ('SegDataPreProcessor',
                                     ('key_file', 'block_size', 'pad_to_grid',
                                      'grid_pad_val')),
}


def load_state_dict(path: str) -> 'OrderedDict[str, torch.Tensor]':
    """Read a checkpoint file and return its state dict (``state_dict``/``model`` or raw).

    Reads with :func:`mmseg_ppenc.core.checkpoint.read_checkpoint` (``weights_only=True``: only
    tensors and plain containers).

    Raises:
        CheckpointReadError: the file is missing, unreadable or unsafe to unpickle.
            It holds no state dict: the same error.
    """
    return read_weights(path)[0]


def find_patch_weight(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The key of the input patch-projection weight (mmseg naming of any supported
    family, or timm's ViT naming; :func:`mmseg_ppenc.adaptation.locate_projection`).

    Raises:
        CheckpointLayoutError: (a ``KeyError``) none or several found.
    """
    layout, prefix, patch_embed = locate_projection(state_dict)
    return prefix + (f'{patch_embed}.projection.weight' if layout == 'mmseg' else TIMM_MARKER)


def patch_embedding_matrix(state_dict: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The patch-embedding weight flattened to ``(D, C*b*b)`` in (channel, y, x) order."""
    w = state_dict[find_patch_weight(state_dict)]
    return w.detach().to('cpu', torch.float64).reshape(w.shape[0], -1).numpy()


def _unit_columns(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=0, keepdims=True), 1e-300)


def weight_matching_attack(plain: np.ndarray, encrypted: np.ndarray) -> np.ndarray:
    """Recover the permutation by matching normalised patch-embedding columns.

    Args:
        plain (np.ndarray): Public plain weight ``E``, shape ``(D, n)``.
        encrypted (np.ndarray): Uploaded weight ``E'``, shape ``(D, n)``.

    Returns:
        np.ndarray: Estimate ``est`` (``est[k]`` = plain column matched to ``E'[:, k]``),
        the assignment maximising the total cosine similarity.
    """
    if plain.shape != encrypted.shape:
        raise ValueError(f'Plain weight {plain.shape} and encrypted weight '
                         f'{encrypted.shape} differ; they must come from the same '
                         'architecture.')
    sim = _unit_columns(encrypted).T @ _unit_columns(plain)
    rows, cols = linear_sum_assignment(-sim)
    est = np.empty(plain.shape[1], dtype=np.int64)
    est[rows] = cols
    return est


def sorted_column_attack(plain: np.ndarray, encrypted: np.ndarray) -> np.ndarray:
    """Like :func:`weight_matching_attack`, but blind to a permutation of the rows.

    Each column is normalised and its entries sorted, which removes any hidden-channel
    permutation; columns are then matched by Euclidean distance.
    """
    a = np.sort(_unit_columns(encrypted), axis=0)
    b = np.sort(_unit_columns(plain), axis=0)
    # ||a_k - b_j||^2 = 2 - 2 a_k.b_j for unit columns.
    rows, cols = linear_sum_assignment(-(a.T @ b))
    est = np.empty(plain.shape[1], dtype=np.int64)
    est[rows] = cols
    return est


# ------------------------------------------------------------------------ mitigations
def add_noise_to_patch_embedding(state_dict: Mapping[str, torch.Tensor], rel_sigma: float,
                                 seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """Add Gaussian noise of ``rel_sigma`` times the weight's RMS to the patch embedding.

    Args:
        state_dict (Mapping[str, Tensor]): Encrypted state dict (not modified).
        rel_sigma (float): Noise standard deviation relative to the RMS of the weight.
        seed (int): Noise seed. Defaults to 0.
    """
    if rel_sigma < 0:
        raise ValueError(f'rel_sigma must be >= 0, got {rel_sigma}.')
    out = OrderedDict(state_dict)
    key = find_patch_weight(out)
    w = out[key]
    gen = torch.Generator().manual_seed(seed)
    rms = w.double().pow(2).mean().sqrt()
    noise = torch.randn(w.shape, generator=gen, dtype=torch.float64) * rms * rel_sigma
    out[key] = (w.double() + noise).to(w.dtype)
    return out


def withhold_patch_embedding(state_dict: Mapping[str, torch.Tensor],
                             seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """Replace the patch embedding by a fresh random one of the same RMS (not uploaded)."""
    out = OrderedDict(state_dict)
    key = find_patch_weight(out)
    w = out[key]
    gen = torch.Generator().manual_seed(seed)
    rms = w.double().pow(2).mean().sqrt()
    out[key] = (torch.randn(w.shape, generator=gen, dtype=torch.float64) * rms).to(w.dtype)
    return out


# Parameters of mmseg's VisionTransformer and the axis that carries the embedding
# channels (the residual stream): permuting all of them by one sigma is exact.
_HIDDEN_AXES = [
    (r'cls_token$', -1), (r'pos_embed$', -1),
    (r'patch_embed\.projection\.(weight|bias)$', 0),
    (r'patch_embed\.norm\.(weight|bias)$', 0),
    (r'(pre_ln|ln1|ln2|norm\d*)\.(weight|bias)$', 0),
    (r'attn\.attn\.in_proj_weight$', 1),
    (r'attn\.attn\.out_proj\.(weight|bias)$', 0),
    (r'ffn\.layers\.0\.0\.weight$', 1),
    (r'ffn\.layers\.1\.(weight|bias)$', 0),
]
_HIDDEN_UNCHANGED = [r'attn\.attn\.in_proj_bias$', r'ffn\.layers\.0\.0\.bias$']


def permute_hidden_channels(state_dict: Mapping[str, torch.Tensor], sigma: np.ndarray,
                            prefix: str = '') -> 'OrderedDict[str, torch.Tensor]':
    """Permute the embedding channels of an mmseg ``VisionTransformer`` (exact).

    The backbone with the returned weights computes ``features[:, sigma]`` of the original
    (channel ``i`` of every output is the original channel ``sigma[i]``).

    Args:
        state_dict (Mapping[str, Tensor]): ViT state dict (backbone or segmentor).
        sigma (np.ndarray): Permutation of ``0..D-1``.
        prefix (str): Key prefix of the ViT (``''`` or ``'backbone.'``). Defaults to ''.

    Raises:
        KeyError: a ViT parameter this function does not know how to permute (refusing is
            safer than returning a silently different model).
    """
    sigma = torch.as_tensor(np.asarray(sigma), dtype=torch.long)
    out = OrderedDict()
    for name, t in state_dict.items():
        if not name.startswith(prefix):
            out[name] = t
            continue
        rel = name[len(prefix):]
        axis = next((ax for pat, ax in _HIDDEN_AXES if re.search(pat, rel)), None)
        if axis is None:
            if any(re.search(pat, rel) for pat in _HIDDEN_UNCHANGED):
                out[name] = t
                continue
            raise KeyError(f'permute_hidden_channels does not know how parameter {name!r} '
                           'relates to the embedding channels; only mmseg '
                           'VisionTransformer state dicts are supported.')
        out[name] = t.index_select(axis % t.dim(), sigma.to(t.device))
    return out


def pca_patch_embedding(images: Sequence[np.ndarray], dims: int, block_size: int = 16,
                        mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD,
                        rms: float = 0.02) -> np.ndarray:
    """A stand-in for a pre-trained patch embedding: principal components of patches.

    Trained ViT patch embeddings are dominated by smooth, low-frequency filters, so the
    columns of neighbouring pixels are similar; the leading principal components of
    normalised image patches share that property (random weights do not). Used where real
    pre-trained weights are not available offline.

    Args:
        images (Sequence[np.ndarray]): RGB uint8 images on the block grid.
        dims (int): Embedding dimension ``D`` (at most ``3*b*b``).
        block_size (int): Patch size. Defaults to 16.
        mean (Sequence[float]): Normalisation mean. Defaults to mmseg's ImageNet mean.
        std (Sequence[float]): Normalisation std. Defaults to mmseg's ImageNet std.
        rms (float): RMS of the returned weight. Defaults to 0.02.

    Returns:
        np.ndarray: ``(dims, 3*b*b)`` float64 weight.
    """
    x = blocks_of(images, block_size).astype(np.float64)
    ch = np.repeat(np.arange(3), block_size * block_size)
    x = (x - np.asarray(mean)[ch]) / np.asarray(std)[ch]
    x -= x.mean(0)
    if dims > x.shape[1]:
        raise ValueError(f'dims={dims} exceeds the patch dimension {x.shape[1]}.')
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    # Filters weighted by the square root of their singular value: strong, smooth filters
    # dominate, as in trained embeddings.
    w = vt[:dims] * np.sqrt(s[:dims] / s[0])[:, None]
    return w * (rms / np.sqrt(np.mean(w ** 2)))


def backbone_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """All output feature maps of a backbone, flattened and concatenated (no grad)."""
    with torch.no_grad():
        feats = model(images)
    return torch.cat([f.reshape(f.shape[0], -1) for f in feats], dim=1)


def relative_change(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``||other - reference|| / ||reference||`` over the whole batch."""
    return float((other - reference).norm() / reference.norm())


def recovery_of(est: np.ndarray, true: np.ndarray) -> float:
    """Fraction of positions with ``est[k] == true[k]``."""
    return float(np.mean(np.asarray(est) == np.asarray(true)))


# ------------------------------------------------------------------ initialisation replay
def _keyless_model_cfg(node):
    """A copy of a model config in which key-using components are their keyless twins."""
    if isinstance(node, Mapping):
        out = {k: _keyless_model_cfg(v) for k, v in node.items()}
        twin = _KEYLESS_TWINS.get(out.get('type'))
        if twin is not None:
            out['type'] = twin[0]
            for k in twin[1]:
                out.pop(k, None)
        init = out.get('init_cfg')
        if isinstance(init, Mapping) and init.get('type') in ('Pretrained',
                                                               'Pretrained_Part'):
            out['init_cfg'] = None  # only the random part of the start can be replayed
        return out
    if isinstance(node, (list, tuple)):
        return type(node)(_keyless_model_cfg(v) for v in node)
    return node


def replay_initial_model(checkpoint: Mapping, loader_draws: int = 0
                         ) -> 'OrderedDict[str, torch.Tensor]':
    """Rebuild the random initial weights of the run that wrote ``checkpoint``.

    Uses only what the checkpoint carries: the config text (``meta['cfg']``) and the seed
    (``meta['seed']``). The random state is seeded as mmengine's Runner seeds it, the
    segmentor is built (key-using components replaced by their keyless twins, which
    consume random numbers identically) and ``init_weights()`` runs as the Runner runs it.
    A backbone whose ``init_cfg`` loads a checkpoint gets the random initialisation
    instead (the attacker replays only the random part).

    Between building the model and initialising it the Runner builds the training loop;
    an iteration-based loop opens its dataloader, which draws one base seed from the
    global generator. ``loader_draws`` replays those draws.

    Args:
        checkpoint (Mapping): A loaded mmengine checkpoint.
        loader_draws (int): Dataloader seed draws between build and init. Defaults to 0.

    Returns:
        OrderedDict[str, Tensor]: The initial state dict of the segmentor.

    Raises:
        ValueError: the checkpoint records no config or no seed.
    """
    from mmengine.config import Config
    from mmengine.runner import set_random_seed
    from mmseg.registry import MODELS

    from mmseg_ppenc.compat import replace_syncbn
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    cfg_text, seed = meta.get('cfg'), meta.get('seed')
    if not isinstance(cfg_text, str) or not isinstance(seed, int):
        raise ValueError('The checkpoint records no config text (meta["cfg"]) or no seed '
                         '(meta["seed"]); its initialisation cannot be replayed.')
    cfg = Config.fromstring(cfg_text, file_format='.py')
    model_cfg = _keyless_model_cfg(cfg.model.to_dict())
    replace_syncbn(model_cfg)
    randomness = cfg.get('randomness') or {}
    set_random_seed(seed, deterministic=bool(randomness.get('deterministic', False)))
    model = MODELS.build(model_cfg)
    for _ in range(loader_draws):
        # What torch's DataLoader iterator draws for its base seed.
        torch.empty((), dtype=torch.int64).random_()
    model.init_weights()
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())


def replay_initialisation_attack(path: str, key=None) -> Dict[str, object]:
    """Recover a key's permutation from one checkpoint by replaying its initialisation.

    The replayed initial patch embedding is matched column by column against the
    checkpoint's (:func:`weight_matching_attack`); of the replays with 0, 1 or 2 dataloader
    seed draws (see :func:`replay_initial_model`), the one whose matched columns agree best
    is kept, as an attacker without the key would choose. When the checkpoint's columns are those
    of the initial model in their own order, the run did not permute its start and the
    key is not exposed this way.

    Args:
        path (str): An mmengine checkpoint file (read with ``weights_only=True``).
        key (SecretKey, optional): The true key, to measure the recovery. Defaults to
            None (only the key-free statistics are reported).

    Returns:
        dict: ``identity_fraction`` (columns matched to themselves),
        ``mean_cosine`` (of the matched columns; near 1 means the replay is exact and the
        weights moved little), ``columns`` and, with ``key``, ``recovery`` (fraction of the
        key's permutation recovered) and ``chance`` (the expected recovery of a guess,
        ``1/columns``).
    """
    ckpt = read_checkpoint(path)
    cur = patch_embedding_matrix(state_dict_of(ckpt))
    best = None
    for draws in range(3):
        init = patch_embedding_matrix(replay_initial_model(ckpt, draws))
        est = weight_matching_attack(init, cur)
        cos = float(np.mean(np.sum(_unit_columns(cur) * _unit_columns(init)[:, est],
                                   axis=0)))
        if best is None or cos > best[0]:
            best = (cos, est)
    cos, est = best
    n = cur.shape[1]
    out: Dict[str, object] = dict(columns=int(n),
                                  identity_fraction=recovery_of(est, np.arange(n)),
                                  mean_cosine=cos)
    if key is not None:
        block = int(round(np.sqrt(n / 3)))
        out['recovery'] = recovery_of(est, key.block_permutation(block))
        out['chance'] = 1.0 / n
    return out


def _checkpoint_order(name: str):
    m = re.search(r'(\d+)\.pth$', name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def pretrained_start(cfg) -> Optional[str]:
    """Where a run's starting weights came from, when they were not a random
    initialisation.

    Args:
        cfg (mmengine.Config | Mapping | str): The run's config, or its text (what a
            checkpoint records as ``meta['cfg']``).

    Returns:
        str | None: The setting that loads them (``model.backbone.init_cfg.checkpoint=``,
        ``model.backbone.pretrained=``, ``model.pretrained=`` or, for a run that was not
        resumed, ``load_from=``, with the path), or None for a random start.
    """
    from mmseg_ppenc.models.encrypted_vit import pretrained_checkpoint
    if isinstance(cfg, str):
        from mmengine.config import Config
        cfg = Config.fromstring(cfg, file_format='.py')
    model = cfg.get('model')
    model = model if isinstance(model, Mapping) else {}
    backbone = model.get('backbone')
    backbone = backbone if isinstance(backbone, Mapping) else {}
    ckpt = pretrained_checkpoint(backbone.get('init_cfg'))
    if ckpt:
        return f'model.backbone.init_cfg.checkpoint={ckpt}'
    for where, node in (('model.backbone', backbone), ('model', model)):
        if isinstance(node.get('pretrained'), str):
            return f'{where}.pretrained={node["pretrained"]}'
    # A resumed run's load_from is (usually) its own earlier checkpoint, not its start.
    if isinstance(cfg.get('load_from'), str) and not cfg.get('resume'):
        return f'load_from={cfg["load_from"]}'
    return None


def pretrained_start_of_work_dir(work_dir: str) -> Optional[str]:
    """:func:`pretrained_start` of a training work_dir's run.

    Reads the config recorded in the work_dir's checkpoints (``meta['cfg']``), else the
    config dump mmengine writes next to them.

    Args:
        work_dir (str): A training run's directory.

    Returns:
        str | None: See :func:`pretrained_start`; None also when no config is found.
    """
    import os
    names = sorted((f for f in os.listdir(work_dir) if f.endswith('.pth')),
                   key=_checkpoint_order)
    for name in names[-1:] + names[:1]:
        try:
            ckpt = read_checkpoint(os.path.join(work_dir, name), mmap=True)
        except CheckpointReadError:
            continue  # the replay reports it as skipped, with the reason
        meta = ckpt.get('meta') if isinstance(ckpt, Mapping) else None
        if isinstance(meta, Mapping) and isinstance(meta.get('cfg'), str):
            return pretrained_start(meta['cfg'])
    for name in sorted(os.listdir(work_dir)):
        if name.endswith('.py'):
            with open(os.path.join(work_dir, name), encoding='utf-8') as f:
                text = f.read()
            try:
                return pretrained_start(text)
            except Exception:  # noqa: BLE001 - a .py file that is not a config dump
                continue
    return None


def replay_attack_work_dir(work_dir: str, key=None) -> Dict[str, object]:
    """Run :func:`replay_initialisation_attack` on a work_dir's first and last checkpoint.

    The first checkpoint is the closest to the initialisation (the most exposed), the last
    the one most likely to be shared. A run that starts from pre-trained weights
    (:func:`pretrained_start_of_work_dir`) is not attacked: its start is not a random
    initialisation that the config and seed rebuild, but the public pre-trained model,
    and the weight-matching attack against it recovers the whole key.

    Args:
        work_dir (str): A training run's directory.
        key (SecretKey, optional): The run's key, to measure the recovery. Defaults to
            None.

    Returns:
        dict: ``applicable`` (False for a run from pre-trained weights, which then also
        has ``pretrained``, the setting that loaded them, and ``reason``),
        ``checkpoints`` (file name -> result, or ``{'skipped': reason}``),
        ``max_recovery`` (None without ``key``, without an attacked checkpoint or when
        not applicable), ``chance`` (expected recovery of a guess) and ``at_chance``
        (whether no checkpoint gave away more than 5 positions, which a random guess of a
        768-entry permutation exceeds with probability below 0.1 %; None when not
        applicable).
    """
    import os
    start = pretrained_start_of_work_dir(work_dir)
    if start is not None:
        return {'applicable': False, 'pretrained': start, 'checkpoints': {},
                'max_recovery': None, 'chance': None, 'at_chance': None,
                'reason': 'the run starts from pre-trained weights, not from a random '
                          'initialisation; anyone holding those public weights recovers '
                          'the key by weight matching (--plain-checkpoint)'}
    names = sorted((f for f in os.listdir(work_dir) if f.endswith('.pth')),
                   key=_checkpoint_order)
    chosen = names[:1] + names[-1:] if len(names) > 1 else names
    results: Dict[str, object] = {}
    recoveries, chance = [], None
    for name in chosen:
        try:
            res = replay_initialisation_attack(os.path.join(work_dir, name), key)
        except (ValueError, KeyError) as e:
            results[name] = {'skipped': str(e)}
            continue
        results[name] = res
        if 'recovery' in res:
            recoveries.append(res['recovery'] * res['columns'])
            chance = res['chance']
    return {'applicable': True, 'checkpoints': results,
            'max_recovery': (max(recoveries) * chance if recoveries else None),
            'chance': chance,
            'at_chance': all(r <= 5 for r in recoveries)}
