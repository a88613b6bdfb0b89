"""birdstack.evaluation."""
