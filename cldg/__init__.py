"""cldg: group-wise contrastive learning for neural dialogue generation (Cai et al., 2020)."""

__version__ = "0.1.0"
