"""Training: weighted position-map loss, on-the-fly synthetic data, checkpoints, DDP."""
