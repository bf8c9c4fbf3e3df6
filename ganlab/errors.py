"""Errors a user can cause. The CLI prints their message alone (no traceback) and exits 2."""


class GanlabError(Exception):
    """A user-caused problem (bad value, missing data, unsupported pair, ...).

    The message must say what is wrong and how to fix it, in one or two sentences.
    """


class DivergedError(GanlabError):
    """Training produced a NaN/Inf loss (the run dir keeps its last good checkpoint)."""
