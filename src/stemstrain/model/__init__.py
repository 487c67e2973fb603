"""The network of the method: U-Net, loss, spot encoding and read-out, export and loading."""

from stemstrain.model.encoding import SpotTargets, decode_spots, render_targets
from stemstrain.model.export import default_model, export_model, load_model, resolve_model
from stemstrain.model.loss import SpotLoss, normalise_target, spot_loss
from stemstrain.model.unet import UNet, normalise_patterns

__all__ = [
    "SpotLoss",
    "SpotTargets",
    "UNet",
    "decode_spots",
    "default_model",
    "export_model",
    "load_model",
    "normalise_patterns",
    "normalise_target",
    "render_targets",
    "resolve_model",
    "spot_loss",
]
