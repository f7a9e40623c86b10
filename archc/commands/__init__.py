"""CLI subcommands. Each module defines `register(subparsers)` and `run(args) -> int`;
`archc.cli` discovers them, so a new command is one new file."""
