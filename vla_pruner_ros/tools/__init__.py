"""Command line tools (``vla-pruner ...``): thin front ends over the pure core."""
