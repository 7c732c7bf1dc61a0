"""The errors vaelab raises for things a user can fix: one base class, so callers (and the CLI)
can tell them apart from bugs.

``VaelabError`` is the base of every such error. ``InputError`` is a bad value (a setting, a
file's contents, an argument): it is also a ``ValueError``, so ``except ValueError`` keeps
working. The more specific errors (``ConfigError``, ``RunDirError``, ``DataFileError`` ...)
live beside the code that raises them and derive from these two. The command line catches
``VaelabError`` (and the operating system's ``OSError`` about the user's files) and prints its
message; anything else is a bug and keeps its traceback.
"""


class VaelabError(Exception):
    """Base class of the errors vaelab raises for something the user can fix."""


class InputError(VaelabError, ValueError):
    """A value vaelab cannot use: the message says which, what was expected, and what to do."""


class VaelabWarning(UserWarning):
    """Something the user should know that does not stop the work (a value far outside the
    training range). The library only warns; the command line shows each as one line,
    ``warning: ...``, never Python's warning format (file, line, source)."""


class VaelabNote(VaelabWarning):
    """Information about the run rather than a problem (the command line shows ``note: ...``)."""
