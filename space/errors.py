"""User-facing errors.

`SpaceError` is raised for bad input (a wrong flag, a missing file, a mask id out of range, ...).
Its message is one line that names the input and the fix; scripts print it without a traceback.
"""


class SpaceError(ValueError):
    """Bad input from the user: one line naming the input and how to fix it."""
