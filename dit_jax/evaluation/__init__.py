"""Evaluation: FID features, prompt adherence metrics."""
