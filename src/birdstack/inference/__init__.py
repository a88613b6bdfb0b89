"""birdstack.inference."""
