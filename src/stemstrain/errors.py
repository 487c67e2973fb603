"""The one error type for bad input."""


class StemstrainInputError(ValueError):
    """Bad input: a file, variable, option or value that is not what stemstrain expects.

    The message names the thing (file, variable or option), what was expected and what was
    found. The CLI prints it as one line and exits with code 2.
    """
