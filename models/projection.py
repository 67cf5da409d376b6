"""The model of -lm contrastive: a network whose own head regresses the PH labels, plus a projection head for the
contrastive loss."""

import torch
import torch.nn.functional as F
from torch import nn

from models.heads import get_head, head_in_features


class ContrastiveNet(nn.Module):
    """A torchvision (or timm) model ``net`` whose own head predicts the PH label vector, plus ``proj_head``: a
    two-layer MLP ``in_features -> in_features -> proj_dim`` (ReLU between) fed with the pooled features the
    net's head receives (captured by a forward pre-hook, so any architecture works; feature maps are
    average-pooled).

    ``forward(x [B, 3, H, W]) -> (PH prediction [B, D], projection [B, proj_dim])``.  ``net`` alone is what the
    weights files hold, in the layout of today's pretraining weights; a checkpoint's ``net.*`` tensors are its
    (:func:`models.loading.classifier_state` takes them).
    """

    def __init__(self, net, proj_dim=128):
        super().__init__()
        self.net = net
        _, _, head = get_head(net)
        width = head_in_features(net)
        self.proj_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim))
        self._features = None
        head.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, module, inputs):
        self._features = inputs[0]

    def forward(self, x):
        out = self.net(x)
        if isinstance(out, tuple):  # inception/googlenet auxiliary outputs in train mode
            out = out[0]
        features, self._features = self._features, None
        if features.dim() > 2:
            features = F.adaptive_avg_pool2d(features, 1)
        return out, self.proj_head(torch.flatten(features, 1))


class PHPrediction(nn.Module):
    """The PH prediction of a :class:`ContrastiveNet` alone (for :func:`util.train.engine.evaluate_regression`)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]
