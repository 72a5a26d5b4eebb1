"""A finished run as a classifier: rebuilt for lmpt eval and lmpt predict, exported for deployment."""
