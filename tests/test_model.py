"""The network and the loss of the method: L = BCE(mask logit, target > 0) + MSE(spot image, target)^γ."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stemstrain.config import ModelConfig
from stemstrain.errors import StemstrainInputError
from stemstrain.model import UNet, export_model, load_model, normalise_patterns, normalise_target, spot_loss


def gaussian_spots(positions, pixels=32, sigma=1.0, amplitudes=None):
    """Target-like image: Gaussian spots at (x, y) [px], cut to zero beyond 3 sigma."""
    y, x = np.mgrid[0:pixels, 0:pixels].astype(float)
    image = np.zeros((pixels, pixels))
    for (px, py), a in zip(positions, amplitudes or [1.0] * len(positions), strict=True):
        r2 = (x - px) ** 2 + (y - py) ** 2
        image += np.where(r2 <= 9 * sigma**2, a * np.exp(-0.5 * r2 / sigma**2), 0.0)
    return torch.tensor(image, dtype=torch.float32)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    targets = torch.stack([gaussian_spots([(8.3, 9.6), (20.1, 22.7)], amplitudes=[1.0, 0.05]) for _ in range(3)])
    outputs = torch.randn(3, 2, 32, 32)
    return outputs, targets


def test_gamma_one_is_bce_plus_mse(batch):
    outputs, targets = batch
    loss = spot_loss(outputs, targets, gamma=1.0)
    bce = F.binary_cross_entropy_with_logits(outputs[:, 0], (targets > 0).float())
    mse = F.mse_loss(outputs[:, 1], targets)
    assert torch.allclose(loss.bce, bce) and torch.allclose(loss.mse, mse)
    assert torch.allclose(loss.total, bce + mse, rtol=1e-7, atol=0)


def test_gamma_is_the_exponent_of_the_mse_term(batch):
    outputs, targets = batch
    loss = spot_loss(outputs, targets, gamma=0.5)
    assert torch.allclose(loss.total, loss.bce + loss.mse.sqrt(), rtol=1e-5)


def test_perfect_prediction_gives_zero_loss(batch):
    # BCE-with-logits of a finite logit is never exactly 0: a logit of ±40 gives log(1 + e^-40) ~ 4e-18,
    # which underflows against 1 in float32, so a confident perfect prediction has a loss below 1e-12.
    _, targets = batch
    outputs = torch.stack([torch.where(targets > 0, 40.0, -40.0), targets], dim=1)
    for gamma in (0.5, 1.0, 2.0):
        loss = spot_loss(outputs, targets, gamma)
        assert loss.mse.item() == 0.0
        assert 0.0 <= loss.total.item() < 1e-12


def test_loss_grows_when_a_spot_moves(batch):
    _, targets = batch
    perfect = torch.stack([torch.where(targets > 0, 40.0, -40.0), targets], dim=1)
    moved = torch.roll(perfect, shifts=1, dims=-1)
    assert spot_loss(moved, targets, 1.0).total > spot_loss(perfect, targets, 1.0).total + 1e-3


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0, 2.0])
def test_gradient_is_finite_where_the_prediction_is_zero(gamma):
    # p = t = 0 everywhere: MSE = 0, where d/dx x^γ diverges for γ < 1.
    outputs = torch.zeros(2, 2, 16, 16, requires_grad=True)
    targets = torch.zeros(2, 16, 16)
    loss = spot_loss(outputs, targets, gamma)
    loss.total.backward()
    assert torch.isfinite(loss.total) and torch.all(torch.isfinite(outputs.grad))
    # and where p = 0 but the target has spots
    outputs = torch.zeros(1, 2, 32, 32, requires_grad=True)
    spot_loss(outputs, gaussian_spots([(10.0, 12.0)])[None], gamma).total.backward()
    assert torch.all(torch.isfinite(outputs.grad)) and outputs.grad[:, 1].abs().sum() > 0


def test_target_normalisation_keeps_spot_centres_and_the_mask():
    spots = [(9.37, 14.81), (22.6, 7.2)]
    target = gaussian_spots(spots, amplitudes=[1.0, 1e-3])
    normalised = normalise_target(target, power=0.5)
    assert torch.equal(normalised > 0, target > 0)
    assert normalised.max() == pytest.approx(1.0)
    # the weak spot is lifted from 1e-3 to sqrt(1e-3) of the strong one
    assert normalised[7, 23] == pytest.approx(np.sqrt(1e-3), rel=0.2)
    y, x = np.mgrid[0:32, 0:32]
    for px, py in spots:
        window = (np.abs(x - px) <= 3) & (np.abs(y - py) <= 3)
        w = normalised.numpy() * window
        centroid = (np.sum(w * x) / w.sum(), np.sum(w * y) / w.sum())
        assert np.allclose(centroid, (px, py), atol=0.05), "a power of a Gaussian is a Gaussian with the same centre"


def test_input_normalisation_does_not_depend_on_dose():
    rng = np.random.default_rng(0)
    pattern = torch.tensor(rng.exponential(size=(1, 1, 32, 32)), dtype=torch.float32)
    low, high = normalise_patterns(pattern * 1e3 / pattern.sum()), normalise_patterns(pattern * 1e7 / pattern.sum())
    assert torch.allclose(low, high, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(normalise_patterns(torch.zeros(1, 1, 32, 32))).all()


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_unet_maps_patterns_to_two_channels(norm):
    model = UNet(ModelConfig(base_channels=4, depth=3, norm=norm)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 32, 48) * 1e4)
    assert out.shape == (2, 2, 32, 48) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.rand(1, 1, 30, 32))


@pytest.mark.parametrize(
    "config, gflop",
    [
        # DESIGN.md: the 4-level, 16-channel U-Net is ~1.15 GFLOP per 128² pattern (2 FLOP per multiply-add).
        (ModelConfig(base_channels=16, depth=4), 1.15),
        # The default since stop 13: half the channels at every level, a quarter of the FLOPs.
        (ModelConfig(), 0.29),
    ],
)
def test_unet_cost_per_pattern(config, gflop):
    from torch.utils.flop_counter import FlopCounterMode

    model = UNet(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, 1, 128, 128))
    assert counter.get_total_flops() / 1e9 == pytest.approx(gflop, rel=0.05)


def test_export_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = UNet(ModelConfig(base_channels=4, depth=2, norm="batch"))
    model.train()
    model(torch.rand(4, 1, 16, 16) * 100)  # moves the BatchNorm running statistics away from their start
    model.eval()
    metadata = {"pixels": 16, "k_sampling": 0.025, "energy_eV": 2e5, "semiangle_mrad": 1.5, "config": {}}
    path = export_model(model, tmp_path / "model.pt", {**metadata, "data_hash": "abc"})
    loaded, meta = load_model(path)
    patterns = torch.rand(3, 1, 16, 16) * 1e5
    with torch.no_grad():
        assert torch.equal(loaded(patterns), model(patterns))
    assert not loaded.training
    assert meta["data_hash"] == "abc" and meta["pixels"] == 16 and "software_version" in meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"], "no temporary files left behind"


def test_load_model_names_the_bad_file(tmp_path):
    with pytest.raises(StemstrainInputError, match="model file not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(StemstrainInputError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(StemstrainInputError, match="not a stemstrain model"):
        load_model(tmp_path / "other.pt")
