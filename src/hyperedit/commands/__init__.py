"""Subcommands of the ``hyperedit`` command line, one module each."""
