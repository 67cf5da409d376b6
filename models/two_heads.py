"""The two-head model of -lm simultaneous / alternating: a classifier plus a PH regression head."""

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import get_head, head_in_features


class FeatureTap(nn.Module):
    """A network ``net`` and the pooled features its own head receives, captured by a forward pre-hook (so any
    architecture works; feature maps, as squeezenet's conv head takes, are average-pooled).  Subclasses add a
    second head on those features; ``net`` alone is what the weights files hold."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        _, _, head = get_head(net)
        self._features = None
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, module, inputs):
        self._features = inputs[0]

    def tapped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(net(x), the pooled features [B, in_features] its head received)``."""
        out = self.net(x)
        if isinstance(out, tuple):  # inception/googlenet auxiliary outputs in train mode
            out = out[0]
        features, self._features = self._features, None
        if features.dim() > 2:
            features = F.adaptive_avg_pool2d(features, 1)
        return out, torch.flatten(features, 1)


class TwoHeads(FeatureTap):
    """A torchvision classifier ``net`` (its own head gives the class scores) plus a PH head: a Linear layer
    ``in_features -> ph_dims`` fed with the features the classifier's head receives.

    ``forward(x [B, 3, H, W]) -> (class scores [B, K], PH prediction [B, ph_dims])``.  ``net`` alone is the
    classifier the weights files hold.
    """

    def __init__(self, net, ph_dims):
        super().__init__(net)
        self.ph_head = nn.Linear(head_in_features(net), ph_dims)

    def forward(self, x):
        out, features = self.tapped(x)
        return out, self.ph_head(features)


class PHOutput(nn.Module):
    """The PH prediction of a :class:`TwoHeads` alone (for :func:`util.train.engine.evaluate_regression`)."""

    def __init__(self, two_heads):
        super().__init__()
        self.two_heads = two_heads

    def forward(self, x):
        return self.two_heads(x)[1]
