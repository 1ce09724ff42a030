"""The ``edgetailor`` command line (typer). Commands live in the modules listed in main.py."""
