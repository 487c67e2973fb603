"""Exported model file: weights, model config and calibration in one ``torch.save`` dict.

Inference needs nothing else: :func:`load_model` rebuilds the network from the stored
:class:`~stemstrain.config.ModelConfig` and returns the metadata (calibration, training
config, data hash, validation scores).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from stemstrain import __version__
from stemstrain.config import ModelConfig
from stemstrain.errors import StemstrainInputError
from stemstrain.io import at_calibration, atomic_output
from stemstrain.model.unet import UNet

# The shipped model: models/ at the top of the source tree (beside src/), or $STEMSTRAIN_MODEL.
SHIPPED_MODELS = Path(__file__).resolve().parents[3] / "models"
DEFAULT_MODEL = "fast-v1.pt"
"""The shipped default: as accurate as general-v2 on the suite and the uniform series at a quarter of
its compute, so that AVX2-only CPUs reach 250 patterns/s too (models/fast-v1.md)."""
CAMERA_MODEL = "camera-v1"
"""The shipped model for real detector data (diffuse halo, camera blur, saturation), by name: the default for
data not at the default model's calibration (:func:`default_model`)."""
MODEL_ENV = "STEMSTRAIN_MODEL"

FORMAT = "stemstrain-model"
FORMAT_VERSION = 1
REQUIRED_METADATA = ("pixels", "k_sampling", "energy_eV", "semiangle_mrad", "config", "data_hash")


def export_model(model: torch.nn.Module, path: str | Path, metadata: dict) -> Path:
    """Write the model for inference, atomically.

    Parameters
    ----------
    model : UNet
        Trained network (a DDP wrapper is unwrapped).
    path : path
        Output file, conventionally ``model.pt``.
    metadata : dict
        Plain Python values (no tensors): at least pixels, k_sampling [1/angstrom], energy_eV
        [eV], semiangle_mrad [mrad], config (the whole :class:`~stemstrain.config.Config` as a
        dict) and data_hash.
    """
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {missing}")
    model = getattr(model, "module", model)
    state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.model_dump(),
        "state_dict": state,
        "metadata": {"software_version": __version__, **metadata},
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Load an exported model for inference.

    Parameters
    ----------
    path : path
        File written by :func:`export_model` (``stemstrain train`` writes ``CKPT_DIR/model.pt``).
    device : str or torch.device
        Where to put the network.

    Returns
    -------
    model : UNet
        In eval mode. ``model(patterns)`` takes raw patterns (N, 1, H, W) [counts] and returns
        (N, 2, H, W): mask logit and spot image.
    metadata : dict
        pixels, k_sampling [1/angstrom], energy_eV [eV], semiangle_mrad [mrad], config, data_hash,
        target_power, validation scores, software_version.

    Raises
    ------
    StemstrainInputError
        If the file is missing or is not a stemstrain model.
    """
    path = Path(path)
    if not path.is_file():
        raise StemstrainInputError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or damaged files
        raise StemstrainInputError(f"{path}: cannot be read as a stemstrain model ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise StemstrainInputError(f"{path}: not a stemstrain model (expected format {FORMAT!r})")
    if payload.get("format_version") != FORMAT_VERSION:
        raise StemstrainInputError(
            f"{path}: model format version {payload.get('format_version')}, this stemstrain reads {FORMAT_VERSION}"
        )
    model = UNet(ModelConfig.model_validate(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload["metadata"]


def default_model(scan=None) -> Path:
    """The model ``stemstrain strain`` uses when none is given: ``$STEMSTRAIN_MODEL``, else a shipped one.

    The shipped default (:data:`DEFAULT_MODEL`), except for a ``scan`` that is not at its calibration: such
    data come from a camera (its own pixel size and detector) and are resampled to the network's; they get
    :data:`CAMERA_MODEL`, trained with a camera's diffuse halo, blur and saturation. Resampled data are read
    by the template read-out, where the two networks place the disks of clean simulations alike (suite
    geometric mean 7.92 against 8.00e-4, models/camera-v1.md), and camera-v1 maps the real MgO scan where
    fast-v1's map is up to 1.7x noisier (models/camera-v1.md, "Which model by default").

    Parameters
    ----------
    scan : xr.Dataset, optional
        The 4D data to be read (contract of docs/DESIGN.md); None: the shipped default.

    Raises
    ------
    StemstrainInputError
        If neither exists (an installation without the source tree's ``models/``).
    """
    path = Path(os.environ.get(MODEL_ENV) or SHIPPED_MODELS / DEFAULT_MODEL)
    if not path.is_file():
        raise StemstrainInputError(
            f"--model: no model given and the default {path} does not exist "
            f"(set {MODEL_ENV} or pass --model CKPT_DIR/model.pt)"
        )
    camera = SHIPPED_MODELS / f"{CAMERA_MODEL}.pt"
    if scan is None or os.environ.get(MODEL_ENV) or not camera.is_file():
        return path
    metadata = torch.load(path, map_location="cpu", weights_only=True)["metadata"]
    return path if at_calibration(scan, int(metadata["pixels"]), float(metadata["k_sampling"])) else camera


def resolve_model(model=None, scan=None):
    """A model given by path, or by the name of a shipped model (``camera-v1`` for ``models/camera-v1.pt``).

    None is the default model for ``scan`` (:func:`default_model`); a string or path comes back as a
    ``Path``; anything else (a loaded network) passes through unchanged.

    Raises
    ------
    StemstrainInputError
        If a string or path is neither a file nor the name of a shipped model.
    """
    if model is None:
        return default_model(scan)
    if not isinstance(model, (str, Path)):
        return model
    if Path(model).is_file():
        return Path(model)
    shipped = SHIPPED_MODELS / f"{Path(model).name.removesuffix('.pt')}.pt"
    if str(model) == Path(model).name and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED_MODELS.glob("*.pt"))) or "none installed"
    raise StemstrainInputError(f"--model: {model}: model file not found, nor a shipped model of that name ({names})")
