"""Training: the train state and step, sharding, optimizer, checkpoints, logging."""
