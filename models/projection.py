"""The model of -lm contrastive: a network whose own head regresses the PH labels, plus a projection head for the
contrastive loss."""

from torch import nn

from models.heads import head_in_features
from models.two_heads import FeatureTap


class ContrastiveNet(FeatureTap):
    """A torchvision (or timm) model ``net`` whose own head predicts the PH label vector, plus ``proj_head``: a
    two-layer MLP ``in_features -> in_features -> proj_dim`` (ReLU between) fed with the pooled features the
    net's head receives (captured by a forward pre-hook, so any architecture works; feature maps are
    average-pooled).

    ``forward(x [B, 3, H, W]) -> (PH prediction [B, D], projection [B, proj_dim])``.  ``net`` alone is what the
    weights files hold, in the layout of today's pretraining weights; a checkpoint's ``net.*`` tensors are its
    (:func:`models.loading.classifier_state` takes them).
    """

    def __init__(self, net, proj_dim=128):
        super().__init__(net)
        width = head_in_features(net)
        self.proj_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim))

    def forward(self, x):
        out, features = self.tapped(x)
        return out, self.proj_head(features)


class PHPrediction(nn.Module):
    """The PH prediction of a :class:`ContrastiveNet` alone (for :func:`util.train.engine.evaluate_regression`)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[0]
