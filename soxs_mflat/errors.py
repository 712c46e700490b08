"""The one exception type a user can cause.

Anything a user can fix (a missing file, a wrong setting, an incomplete set of frames) raises
:class:`UserInputError` with a one-paragraph message that names the file or key and says how to fix
it. The command line turns it into exit status 2 without a traceback. Every other exception is a bug
and keeps its traceback.
"""


class UserInputError(Exception):
    """A problem with the inputs or settings that the user can fix.

    ``message`` becomes one paragraph (its white space folded); ``details`` (e.g. file names) follow
    it, one per line.
    """

    def __init__(self, message: str, *, details: tuple[str, ...] = ()) -> None:
        paragraph = " ".join(message.split())
        super().__init__("".join([paragraph, *(f"\n  {line}" for line in details)]))
