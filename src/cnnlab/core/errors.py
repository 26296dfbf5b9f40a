class CnnlabError(Exception):
    """A user-facing error (a bad value, a missing or malformed file, an output folder that
    cannot be written): the CLI's error boundary (`cnnlab.cli.run_guarded`) prints its message
    on one line and exits 2; any other exception is a one-line "unexpected error", exit 1."""
