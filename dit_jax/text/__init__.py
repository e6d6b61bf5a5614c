"""Text encoders run once, ahead of training."""
