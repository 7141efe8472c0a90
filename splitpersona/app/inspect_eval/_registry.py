"""What the `inspect_ai` entry point loads: importing the package registers its provider, solvers, scorer and tasks."""

from splitpersona.app.inspect_eval import spt, spt_ask, spt_flag, spt_heldout, spt_review  # noqa: F401
