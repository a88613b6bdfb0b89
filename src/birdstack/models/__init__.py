"""birdstack.models."""
