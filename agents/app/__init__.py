"""The application on top: the `evolve` command, runs, reports, benches, the NanoGPT build, training."""
