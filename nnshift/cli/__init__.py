"""The `nnshift` command line: one module per subcommand (its options and its handler), `main` in `app`.

Importing this package is light (argparse and the standard library): each handler imports what it needs.
"""

from nnshift.cli.app import COMMANDS, build_parser, main
from nnshift.cli.common import CliError, Command

EXAMPLES: dict[str, str] = {name: c.example for name, c in COMMANDS.items()}

__all__ = ["COMMANDS", "EXAMPLES", "CliError", "Command", "build_parser", "main"]
