"""One run from a config: the runner, the training loop and step, the trainers and the loss decision."""
