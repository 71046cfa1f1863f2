"""Model builders for the trainer tests (importable as 'builders:...' with tests/ on the path)."""
import torch


class Affine(torch.nn.Module):
    """y = x W + b with plain Parameters: no Linear layer to read the sizes from."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(in_dim, out_dim) * 0.1)
        self.b = torch.nn.Parameter(torch.zeros(out_dim))

    def forward(self, x):
        return x @ self.w + self.b


def build_affine(in_dim, out_dim, cfg):
    return Affine(in_dim, out_dim)


def bad_adapter(frame):  # wrong signature is only found when called; a missing name at import
    return frame
