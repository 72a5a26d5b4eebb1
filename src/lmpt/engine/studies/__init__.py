"""Many runs: sweeps over methods and seeds, paired comparisons, the demo."""
