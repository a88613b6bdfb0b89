"""birdstack.data."""
