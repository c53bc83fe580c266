"""The models' entropy models: CompressAI's to train and freeze, frozen tables to code.

A model's priors have two lives. Training and ``freeze()`` need CompressAI's
``EntropyBottleneck`` (a learned factorized density) and ``GaussianConditional`` (the Gaussian
scale table): their likelihoods, their auxiliary loss, and ``update()``, which turns them into
16-bit CDF tables once. Coding needs only those frozen tables — which ship in the weights file —
and, for a hyper-latent, the channel medians. So a model built *for coding*
(:func:`coding_only`, which :func:`bmz.codec.zoo.load_model` uses for shipped weights) holds
:class:`FrozenBottleneck` / :class:`FrozenGaussianConditional` in their place: the same buffer
names, so a shipped state dict loads unchanged (and is coded with the very same integers), and
no CompressAI import, whose package import costs seconds (torch_geometric, torch._dynamo,
scipy.stats) before the first slice is decoded.

A shipped weights file also holds the training-time state of the priors, which coding never
reads: the factorized density's ``matrices.*``, ``biases.*``, ``factors.*`` and ``target``, the
likelihood and scale lower bounds, the Gaussian ``scale_bound``. The frozen modules accept these
entries on load and drop them (:attr:`FrozenEntropyTables.training_only`); any other entry they
do not hold is still an error under ``strict`` loading. The weights files stay as they are (their
SHA-256 is what ``.bmz`` files name): the training-time state is there for ``bmz train
--init-from`` and for anyone who rebuilds the training model from them (``build_model`` without
:func:`coding_only`).

A frozen-tables model codes exactly as the training-built model with the same weights; it cannot
be trained or frozen again (its density is gone): ``forward`` and ``update`` raise.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
import warnings

import torch
import torch.nn as nn

_CODING_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("bmz_coding_only", default=False)


@contextlib.contextmanager
def coding_only():
    """Within this block, models are built for coding: their priors are frozen tables
    (:func:`entropy_bottleneck`, :func:`gaussian_conditional`), to be filled by loading frozen
    weights."""
    token = _CODING_ONLY.set(True)
    try:
        yield
    finally:
        _CODING_ONLY.reset(token)


def building_coding_only() -> bool:
    """Whether models are being built for coding (inside :func:`coding_only`)."""
    return _CODING_ONLY.get()


def compressai_entropy_models():
    """``compressai.entropy_models`` (imported on first use: training and ``freeze()`` only)."""
    with warnings.catch_warnings():
        # CompressAI 1.2 decorates helpers with torch.jit.script, which recent torch flags as
        # deprecated when it is imported; the notice says nothing to bmz's users. Only here, and
        # only that notice: the caller's warning filters are left as they are.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        import compressai.entropy_models as em
    return em


def entropy_bottleneck(channels: int) -> nn.Module:
    """A factorized prior over ``channels`` channels: CompressAI's ``EntropyBottleneck``, or
    :class:`FrozenBottleneck` when building for coding."""
    if building_coding_only():
        return FrozenBottleneck(channels)
    return compressai_entropy_models().EntropyBottleneck(channels)


def gaussian_conditional(scale_table: list[float]) -> nn.Module:
    """The Gaussian conditional over ``scale_table`` (lower scale bound: its first entry):
    CompressAI's ``GaussianConditional``, or :class:`FrozenGaussianConditional` when building
    for coding."""
    if building_coding_only():
        return FrozenGaussianConditional(scale_table)
    return compressai_entropy_models().GaussianConditional(scale_table, scale_bound=float(scale_table[0]))


def is_trainable_bottleneck(m: nn.Module) -> bool:
    """Whether ``m`` is a trainable factorized prior (CompressAI's ``EntropyBottleneck``), as
    opposed to frozen tables or any other module. Never imports CompressAI: a model that holds
    one has imported it already."""
    em = sys.modules.get("compressai.entropy_models")
    return em is not None and isinstance(m, em.EntropyBottleneck)


class FrozenEntropyTables(nn.Module):
    """The coding state of a frozen CompressAI entropy model: ``_quantized_cdf`` (one padded CDF
    row per table), ``_cdf_length`` and ``_offset`` (see
    :meth:`bmz.codec.entropy.TableCoder.from_entropy_model`), empty until loaded."""

    #: state-dict entries (relative to the module) of the training-time model that coding never
    #: reads: accepted on load and dropped (the module docstring says why)
    training_only: tuple[str, ...] = (r"likelihood_lower_bound\.bound",)

    def __init__(self):
        super().__init__()
        self.register_buffer("_offset", torch.IntTensor())
        self.register_buffer("_quantized_cdf", torch.IntTensor())
        self.register_buffer("_cdf_length", torch.IntTensor())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        drop = re.compile("(?:" + "|".join(self.training_only) + ")$")
        unexpected_keys[:] = [k for k in unexpected_keys
                              if not (k.startswith(prefix) and drop.match(k[len(prefix):]))]

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} holds frozen coding tables only: build the "
                           "model with bmz.codec.models.build_model (not for coding) to train it")

    def update(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__}: the tables of shipped weights are not "
                           "recomputed (the training-time density is not kept); build the model "
                           "with bmz.codec.models.build_model to freeze it again")


class FrozenBottleneck(FrozenEntropyTables):
    """A frozen ``EntropyBottleneck``: the CDF tables and ``quantiles`` (``[:, 0, 1]``: the
    channel medians, which the hyperprior models add to decoded hyper-latent symbols)."""

    training_only = FrozenEntropyTables.training_only + (r"(?:matrices|biases|factors)\.\d+", "target")

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("quantiles", torch.zeros(int(channels), 1, 3))


class FrozenGaussianConditional(FrozenEntropyTables):
    """A frozen ``GaussianConditional``: the CDF tables and the ``scale_table`` they were built
    from (the integer hyper-synthesis indexes them by its own thresholds)."""

    training_only = FrozenEntropyTables.training_only + (r"scale_bound", r"lower_bound_scale\.bound")

    def __init__(self, scale_table: list[float]):
        super().__init__()
        self.register_buffer("scale_table", torch.Tensor(tuple(float(s) for s in scale_table)))
