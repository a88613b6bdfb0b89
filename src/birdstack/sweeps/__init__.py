"""birdstack.sweeps: experiment grids (sweep), their run records (runs) and reports (report)."""
