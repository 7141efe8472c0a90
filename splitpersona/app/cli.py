"""`spt`: a thin shell over the Python API. Each part owns its commands; this file only wires them.

Heavy imports (torch, transformers) happen inside the commands, so `spt --help` stays fast.
Commands raise; `ErrorExit` turns an error into its message and the CLI's one exit code for it.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from splitpersona.data_gen.backend import BatchPending, BudgetReached, GenerationAborted
from splitpersona.data_gen.cli import app as generate_app
from splitpersona.data_gen.store import RunLocked
from splitpersona.eval.cli import app as eval_app
from splitpersona.app.data_cli import app as data_app
from splitpersona.app.demo_cli import demo
from splitpersona.app.export_cli import app as export_app
from splitpersona.app.persona_cli import ask, review
from splitpersona.config import ConfigError
from splitpersona.serving import ServerError
from splitpersona.training.cli import train

# Every command's errors, to (exit code, what the printed message starts with); the first match wins.
EXIT_CODES: dict[type[Exception], tuple[int, str]] = {
    ConfigError: (2, "error"),  # a bad config file, key or value; click's own usage errors exit 2 too
    GenerationAborted: (2, "aborted"),  # the API refused the credentials: fix the setup, then rerun
    BudgetReached: (3, "stopped"),
    BatchPending: (4, "stopped"),
    RunLocked: (1, "error"),
    ServerError: (1, "error"),  # a server that is down or cannot serve the run: the message names its URL
    FileNotFoundError: (1, "error"),  # a tool not built yet (llama-server): the message says how to build it
    ValueError: (1, "error"),  # bad input: a DataError names the file and the record
}
EPILOG = (
    "Exit codes: 0 done; 1 bad input (a file or record, named in the message) or a run directory in use; "
    "2 bad config, key, value or option, or credentials the API refused; 3 budget reached (raise budget_usd "
    "and rerun); 4 a Message Batch is still processing (rerun later); 5 training was preempted (SIGTERM or "
    "SIGUSR1) and checkpointed (rerun with resume=true). A rerun continues where a run stopped."
)


class ErrorExit(SystemExit):
    """Exits with the error's code; its str() is the message, so a test runner shows it too."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except tuple(EXIT_CODES) as e:
            code, label = next(v for cls, v in EXIT_CODES.items() if isinstance(e, cls))
            line = Text(f"{label}: ", style="bold red" if code in (1, 2) else "bold yellow").append(str(e))
            Console(stderr=True, highlight=False, soft_wrap=True).print(line)
            raise ErrorExit(code, str(e)) from e


app = typer.Typer(
    cls=_Group, name="spt", help="Split Personality Training: data, training, and evaluation of an honest persona.",
    epilog=EPILOG, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data", help="Import, inspect and summarise training data.")
app.add_typer(generate_app, name="generate", help="Generate SPT data with Claude (stages 1-3, tags, filter).")
app.add_typer(eval_app, name="eval", help="Evaluate personas against baselines; reproduce published tables.")
app.add_typer(export_app, name="export", help="Export a trained run for a serving engine (llama-server).")
app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
app.command("ask")(ask)
app.command("review")(review)
app.command("demo")(demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
