"""User-facing errors and warnings.

`SpaceError` is raised for bad input (a wrong flag, a missing file, a mask id out of range, ...).
Its message is one line that names the input and the fix; scripts print it without a traceback.
`SpaceWarning` is issued when a call goes on with a changed or doubtful input (decoding cut to the
room left in the model's context, an adapter loaded onto another base than the one it records);
filter it with `warnings.filterwarnings("ignore", category=space.SpaceWarning)` or make it an error.
"""


class SpaceError(ValueError):
    """Bad input from the user: one line naming the input and how to fix it."""


class SpaceWarning(UserWarning):
    """A call that goes on with a changed or doubtful input: one line saying what and why."""
