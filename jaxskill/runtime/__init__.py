"""What runs the stages: the pipeline and its records, the runner (mesh, batches, loops), the run context, sharding, state checkpoints, files and memory plans."""
