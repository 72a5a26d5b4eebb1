"""What a run writes and reads back: the folder layout, the end of every run, metrics, decisions, checkpoints, the report."""
