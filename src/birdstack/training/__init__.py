"""birdstack.training."""
