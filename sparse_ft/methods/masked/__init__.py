"""Methods that select which entries train (FISH, random mask, BitFit, Diff Pruning) and the exact
sparse-update machinery they share (selection → flat optimizer vector → delta artifacts)."""
