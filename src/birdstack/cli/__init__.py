"""birdstack.cli."""
