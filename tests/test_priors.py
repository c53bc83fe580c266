"""Models loaded for coding (bmz.codec.zoo.load_model) hold their priors as frozen tables
(bmz.codec.priors), not CompressAI's entropy models: they must code exactly as the same weights
built the training way — the same payload bytes, the same decoded arrays — load the shipped state
dicts (dropping only the known training-time entries) and refuse to train or freeze."""

from __future__ import annotations

import pytest
import torch

from bmz.codec import priors, zoo
from bmz.codec.models import build_model


def _training_built(name: str):
    """The shipped weights of ``name`` loaded into the model built the training way (CompressAI's
    entropy models), as ``bmz train --init-from`` or a re-export would."""
    blob = torch.load(zoo.find_weights(name), map_location="cpu", weights_only=True)
    m = build_model(blob["model_name"], **blob["config"])
    m.load_state_dict(blob["state_dict"])
    return m.eval()


def _slices(n: int, H: int, W: int) -> list[torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(H) / H, torch.arange(W) / W, indexing="ij")
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16).float()
    return [(disc * (0.5 + 0.3 * torch.sin(11 * xx + k) * torch.cos(7 * yy))
             + 0.02 * torch.rand(H, W, generator=torch.Generator().manual_seed(k)))[None, None]
            for k in range(n)]


def _code_both(coding, training, H: int, W: int) -> None:
    """Every quality of two slices (the second with the first as context where the model has
    inter-slice context): the same payloads and the same decoded arrays from both models."""
    xs = _slices(2, H, W)
    inter = getattr(coding, "inter_slice", False)
    for q in sorted({0, coding.n_qualities // 2, coding.n_qualities - 1}):
        prev = None
        for x in xs:
            kw = {"prev": prev} if inter else {}
            data, sym = coding.analyse(x, q, **kw)
            data_t, sym_t = training.analyse(x, q, **kw)
            assert data == data_t and torch.equal(sym, sym_t), (coding.model_name, q)
            out = coding.decompress_slice(data, (H, W), q, **kw)
            assert torch.equal(out, training.decompress_slice(data, (H, W), q, **kw))
            if inter:
                prev = coding.context_input(sym, q)


@pytest.mark.parametrize("name", sorted(zoo.available_models()))
def test_shipped_model_loaded_for_coding_codes_as_the_training_built_one(name):
    coding, _ = zoo.load_model(name)
    training = _training_built(name)
    if hasattr(training, "entropy_bottleneck") or hasattr(training, "entropy_bottlenecks"):
        # what this test compares: frozen tables against CompressAI's entropy models
        em = priors.compressai_entropy_models()
        frozen = [m for m in coding.modules() if isinstance(m, priors.FrozenEntropyTables)]
        trained = [m for m in training.modules() if isinstance(m, em.EntropyModel)]
        assert frozen and len(frozen) == len(trained)
        assert not [m for m in coding.modules() if isinstance(m, em.EntropyModel)]
    d = coding.downsampling
    _code_both(coding, training, 2 * max(d, 32), 3 * max(d, 32) - d)


@pytest.mark.parametrize("name", ["hyperprior-fast", "hyperprior-ctx", "factorized"])
def test_frozen_weights_of_any_family_load_for_coding(name, tmp_path):
    """Small models frozen the training way (also the families without shipped weights), saved,
    then loaded for coding: the same payloads and decoded arrays."""
    small = {"hyperprior-fast": {"N": 8, "M": 16, "c1": 8, "c2": 4},
             "hyperprior-ctx": {"N": 8, "M": 16}, "factorized": {"N": 8, "M": 16}}[name]
    torch.manual_seed(0)
    training = build_model(name, **small)
    path = tmp_path / f"{name}.pt"
    zoo.save_frozen(training, path)
    coding = zoo._load(str(path), zoo.sha256_file(path))
    assert [m for m in coding.modules() if isinstance(m, priors.FrozenEntropyTables)]
    _code_both(coding, training.eval(), 64, 96)


def test_frozen_tables_refuse_training_and_unknown_entries():
    coding, _ = zoo.load_model(zoo.DEFAULT_MODEL)
    with pytest.raises(RuntimeError, match="frozen coding tables"):
        coding(torch.zeros(1, 1, 64, 64), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="not recomputed"):
        coding.freeze()
    blob = torch.load(zoo.find_weights(zoo.DEFAULT_MODEL), map_location="cpu", weights_only=True)
    m = build_model(blob["model_name"], for_coding=True, **blob["config"])
    sd = dict(blob["state_dict"])
    assert "entropy_bottleneck.matrices.0" in sd  # training-time state: accepted, dropped
    m.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="entropy_bottleneck.surprise"):
        m.load_state_dict({**sd, "entropy_bottleneck.surprise": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="_quantized_cdf"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "gaussian_conditional._quantized_cdf"})
