"""Video-P2P (Liu et al., 2023): null-text inversion, token alignment, attention control, the two-branch edit."""
