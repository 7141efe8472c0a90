"""`spt`: a thin shell over the Python API. Each part owns its commands; this file only wires them.

Heavy imports (torch, transformers) happen inside the commands, so `spt --help` stays fast.
"""

from __future__ import annotations

import typer

from data_gen.cli import app as generate_app
from eval.cli import app as eval_app
from splitpersona.app.data_cli import app as data_app
from splitpersona.app.demo_cli import demo
from splitpersona.app.persona_cli import ask, review
from training.cli import train

app = typer.Typer(
    name="spt",
    help="Split Personality Training: data, training, and evaluation of an honest persona.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data", help="Import, inspect and summarise training data.")
app.add_typer(generate_app, name="generate", help="Generate SPT data with Claude (stages 1-3, tags, filter).")
app.add_typer(eval_app, name="eval", help="Evaluate personas against baselines; reproduce published tables.")
app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
app.command("ask")(ask)
app.command("review")(review)
app.command("demo")(demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
