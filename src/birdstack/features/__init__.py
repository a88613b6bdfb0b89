"""birdstack.features."""
