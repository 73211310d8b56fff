"""Many clips in, flow out: the batch engine behind the command line's ``run``."""
