"""``bmz encode --target-psnr`` (bmz.target): the smallest file reaching a PSNR, among the learned
levels and the bounded-error coder, on a real 12-bit crop (small: seconds per search)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from bmz import api, metrics, target
from bmz.cli import main
from bmz.errors import InputError

PRISMA = "val/dcm_qa_decubitus/HFS_t1_fl2d_sag"


@pytest.fixture(scope="module")
def crop(shared_data):
    from bmz import io as bio

    p = shared_data / PRISMA
    if not p.exists():
        pytest.skip(f"{PRISMA} not in the shared data")
    v = bio.read(p).data
    k, h, w = v.shape[0] // 2, v.shape[1] // 2, v.shape[2] // 2
    return np.ascontiguousarray(v[k - 3:k + 3, h - 40:h + 40, w - 40:w + 40])


def _psnr(vol, data):
    back = api.decompress(data).astype(np.int64)
    peak = int(vol.max()) - int(vol.min())
    return metrics.psnr_from_mse(float(np.mean((vol.astype(np.int64) - back) ** 2)), peak)


@pytest.mark.parametrize("psnr", [38.0, 52.0, 70.0])
def test_the_choice_reaches_the_target_and_the_next_cheaper_setting_does_not(crop, psnr):
    c = target.choose_for_psnr(crop, psnr)
    assert c.psnr >= psnr and _psnr(crop, c.data) == pytest.approx(c.psnr)
    assert api.compress(crop, **c.options) == c.data  # its options give the same file
    assert c.n_bytes == len(c.data)
    if c.max_error is None:  # learned: one level lower misses (the probe is the whole volume)
        assert c.quality == 1 or _psnr(crop, api.compress(crop, quality=c.quality - 1,
                                                           model=c.model)) < psnr
    else:  # bounded: within the bound, and the next larger bound misses
        back = api.decompress(c.data).astype(np.int64)
        assert np.abs(back - crop).max() <= c.max_error
        assert _psnr(crop, api.compress(crop, max_error=c.max_error + 1)) < psnr
    if psnr == 70.0:  # above every learned level: the bounded coder
        assert c.max_error is not None


def test_the_smaller_kind_wins(crop):
    """At the chosen PSNR, the other kind's cheapest file reaching it is not smaller."""
    for psnr in (45.0, 55.0):
        c = target.choose_for_psnr(crop, psnr)
        d = int((int(crop.max()) - int(crop.min())) // 10 ** (psnr / 20))  # always reaches it
        if c.max_error is None:
            assert c.n_bytes <= len(api.compress(crop, max_error=d))
        else:  # no learned level reaching the target is smaller
            for q in range(1, 20):
                try:
                    data = api.compress(crop, quality=q)
                except InputError:
                    break  # past the top level
                if _psnr(crop, data) >= psnr:
                    assert c.n_bytes <= len(data)
                    break


def test_bad_targets_and_inputs_are_refused(crop):
    for bad in (0, -3, float("nan"), float("inf"), "40", True):
        with pytest.raises(InputError, match="target PSNR"):
            target.choose_for_psnr(crop, bad)
    with pytest.raises(InputError, match="floating point"):
        target.choose_for_psnr(crop.astype(np.float32), 40)


def test_cli_target_psnr(crop, tmp_path):
    src = tmp_path / "crop.npy"
    np.save(src, crop)
    out = tmp_path / "crop.bmz"
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(out), "--target-psnr", "48",
                                  "--verify"])
    assert r.exit_code == 0, r.output
    assert "chosen for --target-psnr 48" in r.output
    assert _psnr(crop, out.read_bytes()) >= 48
    r = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "x.bmz"),
                                  "--target-psnr", "48", "--quality", "3"])
    assert r.exit_code != 0 and "--target-psnr chooses" in r.output
    assert not (tmp_path / "x.bmz").exists()
