"""``--cfg-options`` merged into a config, with mmengine's raw errors turned into fixes.

mmengine merges ``a.b.c=V`` by descending into ``a.b``; when the config holds None (or
another non-dict value) there, for instance ``model.backbone.init_cfg=None`` in a config
that trains from scratch, ``Config.merge_from_dict`` raises a ``TypeError`` about
inheriting from the base config. :func:`merge_cfg_options` refuses that case first with
a :class:`~ppenc.errors.ConfigError` that names the option and gives the
spelling that works: ``PREFIX._delete_=True`` replaces the value by the dict that the
other options build. (``PREFIX="dict(type=..., ...)"`` does not work: mmengine 0.10's
``DictAction`` cannot parse ``dict(...)`` values.)
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from ppenc.errors import ConfigError

__all__ = ['merge_cfg_options']

_DELETE = '_delete_'


def _cli_value(value: Any) -> str:
    """A value as ``DictAction`` reads it back (``[a,b]``, ``(a,b)``, plain text)."""
    if isinstance(value, list):
        return '[' + ','.join(_cli_value(v) for v in value) + ']'
    if isinstance(value, tuple):
        return '(' + ','.join(_cli_value(v) for v in value) + ')'
    return str(value)


def _blocked(cfg: Any, key: str) -> Optional[Tuple[str, Any]]:
    """The first prefix of ``key`` whose value in ``cfg`` is neither a dict nor a list, so
    that mmengine cannot merge into it, with that value; None when there is none."""
    node = cfg
    parts = key.split('.')
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, Mapping) or hasattr(node, 'keys'):
            if part not in node:
                return None  # a new key: mmengine creates the dict
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if not (isinstance(node, (Mapping, list, tuple)) or hasattr(node, 'keys')):
            return '.'.join(parts[:i + 1]), node
    return None


def merge_cfg_options(cfg: Any, options: Optional[Mapping[str, Any]]) -> Any:
    """Merge ``--cfg-options`` into ``cfg`` (``Config.merge_from_dict``), refusing with a
    fix the options that mmengine cannot merge.

    Args:
        cfg (mmengine.Config): The config; changed in place.
        options (Mapping[str, Any], optional): What ``mmengine.config.DictAction`` parsed,
            e.g. ``{'model.backbone.init_cfg.type': 'Pretrained'}``. Defaults to None
            (nothing to merge).

    Returns:
        mmengine.Config: ``cfg``.

    Raises:
        ConfigError: an option sets a key below a value that is not a dict (e.g.
            ``model.backbone.init_cfg.checkpoint=PATH`` where ``init_cfg`` is None). The
            message names the option, the value found, and the ``_delete_=True`` form
            that replaces it.
    """
    if not options:
        return cfg
    problems: List[str] = []
    seen = set()
    for key in options:
        found = _blocked(cfg, key)
        if found is None:
            continue
        prefix, value = found
        if f'{prefix}.{_DELETE}' in options or prefix in seen:
            continue
        seen.add(prefix)
        under = [(k, v) for k, v in options.items()
                 if k.startswith(prefix + '.') and k != f'{prefix}.{_DELETE}']
        given = ' '.join(f'{k}={_cli_value(v)}' for k, v in under)
        fix = ' '.join([f'{prefix}.{_DELETE}=True'] + [f'{k}={_cli_value(v)}'
                                                      for k, v in under])
        problems.append(
            f'--cfg-options {given}: {prefix} is {value!r} ({type(value).__name__}) in the '
            'config, so mmengine cannot set keys inside it. Replace the whole value '
            f'instead: --cfg-options {fix}')
    if problems:
        raise ConfigError(' ; '.join(problems) if len(problems) > 1 else problems[0])
    try:
        cfg.merge_from_dict(dict(options))
    except (TypeError, KeyError) as e:
        # What the check above does not foresee (e.g. an index past the end of a list).
        reason = str(e).strip('"\'')[:300]
        raise ConfigError(f'--cfg-options cannot be merged into the config: {reason}. '
                          'Check the option names and list indices against the config.'
                          ) from None
    return cfg
