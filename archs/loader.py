"""The one generic loader: recognise a checkpoint's architecture, build it, load it strictly.

Everything that loads a network goes through here — training's ``pretrain_network_g``, video upscaling, image
and video evaluation, checkpoint conversion — and reads only the architectures' specs
(:mod:`vsrkit.archs.spec`, one beside each class; basicsr's in :mod:`vsrkit.archs.basicsr_specs`):

1. detect: :func:`detect_architecture` reads the parameter names (through ``params`` / ``params_ema`` wrappers
   and ``module.`` prefixes, :func:`vsrkit.utils.checkpoint.extract_state_dict`), finds the one spec whose key
   signature fits (each spec's ``remap`` applied first; the signatures exclude each other, two fitting is a bug
   reported as such) and infers the constructor options its shapes fix (``spec.infer``);
2. build: options, lowest precedence first: inferred from shapes < the checkpoint's own ``network_g`` <
   ``options`` (a dict, or an options YAML whose ``network_g`` is used) / ``arch``;
3. load strictly: the state dict (the spec's ``remap`` applied) must fit the network key for key and shape for
   shape; otherwise one message lists every missing, unexpected and differently shaped key
   (:func:`check_state_dict_fits`), never a load_state_dict traceback.

``load_model(path, arch=None, options=None, device='cpu') -> (net, info)``, info = {'arch', 'options', 'io'
(:class:`ModelIO`; its ``train_size`` from the checkpoint's ``train_size`` entry, which vsrkit's training writes),
'source'}. An unrecognised checkpoint raises one ValueError naming every architecture that can
be recognised.

A registered architecture without a spec works when named with ``arch`` / ``options``: it is taken as a
single-frame network (:func:`default_io`, no test calls): its input / output channels from the options
(``num_in_ch`` / ``in_chans`` / ``in_channels`` / ``in_nc`` and the ``out`` counterparts), else from the first and
the last convolution the network registers (a last convolution with C·scale² outputs, C = 1 or 3, is taken to
feed a PixelShuffle: C channels out); 3 channels are RGB, 1 grey; its scale from the options' ``scale`` /
``upscale`` / ``upscale_factor`` (constructor defaults included), else 1 (the network keeps the size).
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import vsrkit.utils  # noqa: F401  (the basicsr compatibility shim before basicsr is imported)
import basicsr.archs  # noqa: F401  (registers basicsr's architectures)
import vsrkit.archs  # noqa: F401  (registers vsrkit's, and every spec)
from vsrkit.archs.spandrel_specs import load_spandrel, spandrel_architectures
from vsrkit.archs.spec import ARCH_SPECS, ModelIO, StateDict, matching_specs, single_frame_io
from vsrkit.utils.checkpoint import extract_state_dict, load_file
from vsrkit.utils.registry import ARCH_REGISTRY
from vsrkit.utils.signature import signature_problem

__all__ = ['ModelIO', 'detect_architecture', 'check_state_dict_fits', 'load_state', 'read_state_dict', 'load_model',
           'standard_checkpoint', 'model_io', 'default_io']

_IN_KEYS = ('num_in_ch', 'in_chans', 'in_channels', 'in_nc')
_OUT_KEYS = ('num_out_ch', 'out_chans', 'out_channels', 'out_nc')
_SCALE_KEYS = ('scale', 'upscale', 'upscale_factor')


# -------------------------------------------------------------------------------------------------- detect
def _canonical(name: str) -> str:
    """The spec name of a registry name: basicsr registers a few classes with a suffix
    (``SRVGGNetCompact_basicsr``) that options may spell either way."""
    return name.removesuffix('_basicsr')


def _unrecognised(source: str, state: StateDict) -> str:
    sample = ', '.join(list(state)[:6])
    return (f'{source}: unrecognised architecture (keys start {sample}, ...); recognised from their keys: '
            f'{", ".join(sorted(ARCH_SPECS))}; through spandrel: {", ".join(spandrel_architectures())}. '
            'Name another registered network with --arch / --opt')


def _detect(state: StateDict, source: str) -> tuple[str, dict[str, Any]] | None:
    """(name, options from shapes) of the one spec that fits ``state``, None when none does."""
    found = matching_specs(state)
    if len(found) > 1:
        raise ValueError(f'{source}: fits the key signatures of {[s.name for s in found]}; the specs must exclude '
                         'each other (a bug in vsrkit: make their present/absent keys tell them apart)')
    if not found:
        return None
    spec = found[0]
    try:
        return spec.name, spec.infer(spec.remapped(state))
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f'{source}: looks like {spec.name} but its shapes do not fit: {err}') from None


def _network_g(checkpoint: Any) -> dict[str, Any] | None:
    network_g = checkpoint.get('network_g') if isinstance(checkpoint, dict) else None
    return network_g if isinstance(network_g, dict) and 'type' in network_g else None


def detect_architecture(state_dict_or_checkpoint: Any, source: str = 'checkpoint') -> tuple[str, dict[str, Any]]:
    """(architecture name, constructor options) of a state dict, checkpoint dict or path.

    The options are those the shapes fix (the spec's ``infer``); a checkpoint's ``network_g`` entry wins over them
    (its type, and its options over the inferred ones when it names the detected architecture). Raises
    ValueError naming every recognisable architecture when nothing matches."""
    checkpoint = state_dict_or_checkpoint
    if isinstance(checkpoint, (str, Path)):
        source, checkpoint = str(checkpoint), load_file(checkpoint)
    state = extract_state_dict(checkpoint, source=source)
    detected = _detect(state, source)
    network_g = _network_g(checkpoint)
    if network_g is not None:
        base = detected[1] if detected and detected[0] == _canonical(network_g['type']) else {}
        return _canonical(network_g['type']), {**base, **{k: v for k, v in network_g.items() if k != 'type'}}
    if detected is None:
        raise ValueError(_unrecognised(source, state))
    return detected


# ---------------------------------------------------------------------------------------------- load strictly
def check_state_dict_fits(net: nn.Module, state: StateDict) -> list[str]:
    """Every way ``state`` fails to fit ``net`` for a strict load, one entry per key: missing, unexpected, or of
    another shape. Empty when ``net.load_state_dict(state, strict=True)`` would succeed."""
    own = net.state_dict()
    problems = [f'missing {k} {list(v.shape)}' for k, v in own.items() if k not in state]
    problems += [f'unexpected {k} {list(v.shape)}' for k, v in state.items() if k not in own]
    problems += [f'{k}: {list(state[k].shape)} in the checkpoint, {list(v.shape)} in the network'
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    return problems


def load_state(net: nn.Module, state: StateDict, strict: bool = True, source: str = 'checkpoint') -> list[str]:
    """Load ``state`` into ``net``. Strict: it must fit exactly, else one ValueError lists every problem (nothing
    loaded). Not strict (BasicSR's ``strict_load_g: false``): the keys of the network's shapes load, the rest is
    left out. Returns what did not fit (empty after a strict load)."""
    problems = check_state_dict_fits(net, state)
    if problems and strict:
        raise ValueError(f'{source} does not fit {type(net).__name__} ({len(problems)} problems): '
                         + '; '.join(problems))
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    return problems


def read_state_dict(path: str | Path, arch: str | None = None, param_key: str | None = None) -> StateDict:
    """The weights in checkpoint ``path`` (``param_key`` or the usual wrappers), renamed by ``arch``'s spec's
    ``remap`` when it has one (an original checkpoint's names -> vsrkit's)."""
    state = extract_state_dict(load_file(path), param_key, source=str(path))
    spec = ARCH_SPECS.get(_canonical(arch)) if arch else None
    return spec.remapped(state) if spec is not None else state


# ---------------------------------------------------------------------------------------------------- build
def _arch_class(name: str) -> type[nn.Module]:
    # basicsr registers a few classes with a suffix (SRVGGNetCompact_basicsr) and finds them by the plain name.
    for key in (name, f'{name}_basicsr'):
        if key in ARCH_REGISTRY:
            return ARCH_REGISTRY.get(key)
    raise KeyError(f"unknown architecture '{name}'; registered: {', '.join(sorted(ARCH_REGISTRY.keys()))}")


def _build_network(name: str, options: dict[str, Any]) -> nn.Module:
    """``name(**options)`` from the registry; options that do not bind are one ValueError, not a TypeError (the
    options builder, :func:`vsrkit.archs.build_network`, leaves that to the constructor)."""
    cls = _arch_class(name)
    problem = signature_problem(cls, options)
    if problem:
        raise ValueError(problem)
    return cls(**options)


def _explicit_options(options: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    if options is None or isinstance(options, dict):
        return dict(options or {})
    opt = yaml.safe_load(Path(options).read_text(encoding='utf-8')) or {}
    if not isinstance(opt.get('network_g'), dict):
        raise KeyError(f'{options}: no network_g mapping')
    return dict(opt['network_g'])


def _resolve(checkpoint: Any, source: str, arch: str | None,
             options: dict[str, Any] | str | Path | None) -> tuple[str, dict[str, Any], str, str | None]:
    """(name, options, where the name came from, what the keys look like) for ``checkpoint``."""
    explicit = _explicit_options(options)
    name = _canonical(arch or explicit.get('type') or '') or None
    try:
        detected_name, detected = detect_architecture(checkpoint, source=source)
    except ValueError:
        if name is None:
            raise
        detected_name, detected = None, {}
    merged = {**(detected if detected_name == (name or detected_name) else {}),
              **{k: v for k, v in explicit.items() if k != 'type'}}
    origin = 'options' if arch or explicit else 'network_g' if _network_g(checkpoint) else 'shapes'
    return name or detected_name, merged, origin, detected_name


def _load(path: str | Path, arch: str | None, options: dict[str, Any] | str | Path | None,
          ) -> tuple[nn.Module, StateDict, dict[str, Any]]:
    checkpoint = load_file(path)
    try:
        name, merged, origin, looks_like = _resolve(checkpoint, str(path), arch, options)
    except ValueError:
        # None of vsrkit's specs recognises it and nothing names one: spandrel's architectures come next.
        state = extract_state_dict(checkpoint, source=str(path))
        found = None if arch or options or _network_g(checkpoint) else load_spandrel(state, str(path))
        if found is None:
            raise
        return found[0], state, found[1]
    state = extract_state_dict(checkpoint, source=str(path))
    spec = ARCH_SPECS.get(_canonical(name))
    state = spec.remapped(state) if spec is not None else state
    hint = f' (its keys look like {looks_like})' if looks_like not in (None, name) else ''
    try:
        net = _build_network(name, merged)
        load_state(net, state, strict=True, source=f'{path}{hint}')
    except ValueError as err:
        raise ValueError(f'{path}: cannot load as {name}({merged}): {err}') from None
    io = model_io(name, merged, net)
    trained = checkpoint.get('train_size') if isinstance(checkpoint, dict) else None
    if isinstance(trained, int) and io.train_size is None:  # vsrkit's training records its LR patch side
        io = replace(io, train_size=trained)
    return net, state, {'arch': name, 'options': merged, 'io': io, 'source': origin}


def load_model(path: str | Path, arch: str | None = None, options: dict[str, Any] | str | Path | None = None,
               device: str | torch.device = 'cpu') -> tuple[nn.Module, dict[str, Any]]:
    """Build the network in checkpoint ``path`` and load it strictly (eval mode, on ``device``).

    ``arch`` / ``options`` (a network_g dict or an options YAML) override what the checkpoint says and what its
    shapes say (module docstring). Returns (network, info) with info = {'arch', 'options' (as given to the
    constructor), 'io' (:class:`ModelIO`), 'source': where the architecture came from: 'shapes', 'network_g' (the
    checkpoint's) or 'options'}."""
    net, _, info = _load(path, arch, options)
    return net.to(device).eval(), info


def standard_checkpoint(path: str | Path, arch: str | None = None,
                        options: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """Checkpoint ``path`` in vsrkit's form, ``{'params': state dict in vsrkit's names, 'network_g': {'type', ...
    options}}``, after checking that it loads strictly (:func:`load_model`'s rules). The tensors are the file's own
    (dtype kept)."""
    _, state, info = _load(path, arch, options)
    return {'params': state, 'network_g': {'type': info['arch'], **info['options']}}


# ------------------------------------------------------------------------------------------------------- io
def _defaults(cls: type) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}


def default_io(arch: str, options: dict[str, Any], net: nn.Module | None = None) -> ModelIO:
    """The ModelIO of a registered network without a spec: single frame, channels and scale by the module
    docstring's rule (no test calls). ``options``: the full constructor options; ``net`` (built from them when
    needed and not given) is read only when the options do not name the channels."""
    def channels(keys: tuple[str, ...], first: bool) -> int:
        for key in keys:
            if isinstance(options.get(key), int):
                return options[key]
        built = net if net is not None else _build_network(arch, options)
        convs = [m for m in built.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if not convs:
            raise ValueError(f'{arch}: no {"/".join(keys)} option and no convolution to read its channels from; '
                             'give it a spec (vsrkit.archs.spec)')
        if first:
            return convs[0].in_channels
        out = convs[-1].out_channels
        # A last convolution giving C·scale² channels (C = 1 or 3) feeds a PixelShuffle: C channels come out.
        return out // scale ** 2 if scale > 1 and out % scale ** 2 == 0 and out // scale ** 2 in (1, 3) else out

    scale = next((options[k] for k in _SCALE_KEYS if isinstance(options.get(k), int)), 1)
    return single_frame_io(channels(_IN_KEYS, True), channels(_OUT_KEYS, False), scale)


def model_io(arch: str, options: dict[str, Any], net: nn.Module | None = None) -> ModelIO:
    """The :class:`ModelIO` of a registered architecture built with ``options`` (unset options: the
    constructor's defaults): its spec's, else :func:`default_io`."""
    full = {**_defaults(_arch_class(arch)), **options}
    spec = ARCH_SPECS.get(_canonical(arch))
    return spec.io(full) if spec is not None else default_io(arch, full, net)
