"""SPT inside Inspect (`pip install splitpersona[inspect]`): the main model as a provider, the review as
a solver, the flag as a scorer, and two tasks.

    inspect eval splitpersona/spt_heldout --model spt/runs/demo/persona -T records=heldout.jsonl

Inspect finds these through the `inspect_ai` entry point (`_registry`), so no import is needed:
- model `spt/<run_dir>`: the run's main model, adapter off (`model.SPTModelAPI`);
- solver `spt_review`: the persona's (or a control arm's) review of the last assistant turn;
- scorer `spt_flag`: its flag against the sample's target, and how often it reports a problem;
- tasks `spt_heldout` (held-out records) and `spt_ask` (standalone questions).
"""

try:
    import inspect_ai  # noqa: F401
except ImportError as e:
    raise ImportError("splitpersona's Inspect integration needs inspect-ai: pip install 'splitpersona[inspect]'") from e

from splitpersona.app.inspect_eval.providers import spt
from splitpersona.app.inspect_eval.review import SPTReview, flag_rate, replay_response, spt_flag, spt_review
from splitpersona.app.inspect_eval.tasks import spt_ask, spt_heldout

__all__ = ["SPTReview", "flag_rate", "replay_response", "spt", "spt_ask", "spt_flag", "spt_heldout", "spt_review"]
