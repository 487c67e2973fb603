"""The network of the method: U-Net, loss, spot read-out, export and loading."""

from stemstrain.model.encoding import decode_spots
from stemstrain.model.export import export_model, load_model
from stemstrain.model.loss import SpotLoss, normalise_target, spot_loss
from stemstrain.model.unet import UNet, normalise_patterns

__all__ = [
    "SpotLoss",
    "UNet",
    "decode_spots",
    "export_model",
    "load_model",
    "normalise_patterns",
    "normalise_target",
    "spot_loss",
]
