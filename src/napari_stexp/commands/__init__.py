"""CLI subcommand groups. Each module defines ``register(subparsers)`` and is listed in
:data:`napari_stexp.cli.COMMAND_MODULES`."""
