"""The one exception type users see: a message naming the file, the field and the fix."""


class HmicError(Exception):
    """An error a user can act on. The CLI prints its message without a traceback."""
