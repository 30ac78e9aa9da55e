"""The one exception type that command-line tools turn into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from a user (missing file, empty corpus, not a model folder...). Printed as one line, exit 2."""
