"""Small network heads shared by the models (imports torch; never imported at plugin start)."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Module):
    """Linear → GELU → Linear → dropout, plus a residual from the first Linear, then LayerNorm.

    The projection of mclSTExp/BLEEP (CLIP-style): the residual keeps the linear projection
    reachable while the GELU branch adds capacity; LayerNorm fixes the embedding's scale.
    """

    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        projected = self.projection(x)
        x = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(x + projected)
