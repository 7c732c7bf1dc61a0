"""Running vaelab on a cluster's own engines: SLURM batch scripts (job arrays for sweeps,
torchrun across nodes for one run), written and submitted; vaelab schedules nothing itself."""
