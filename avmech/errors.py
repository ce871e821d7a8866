"""The errors avmech raises: each names the problem and the fix.

Every one is an `AVMechError`, in four kinds; the command line prints one line for each
and exits with the kind's status (`EXIT_STATUS`):

=================  =============================================================  ======
``InputError``     a sample, file, configuration, argument or group avmech cannot   2
                   use as given
``ModelError``     a model name, checkpoint or setting it cannot load or trace      4
``MediaError``     a media file that is missing, unreadable or unsuitable          5
``RemoteError``    a run on an NDIF server that failed                             3
=================  =============================================================  ======
"""


class AVMechError(Exception):
    """Base of every error avmech raises on purpose."""


class InputError(AVMechError, ValueError):
    """A sample, file, configuration or argument that avmech cannot use as given."""


class ModelError(AVMechError, ValueError):
    """A model name, checkpoint or setting that avmech cannot load or trace."""


class MediaError(AVMechError, ValueError):
    """A media file is missing, unreadable, or unsuitable; the message says how to fix it."""


class RemoteError(AVMechError, RuntimeError):
    """A remote run failed; the message names the server, the problem and the fix in one
    line, and ``detail`` keeps what the server said in full (a traceback, say)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


EXIT_STATUS: dict[type[AVMechError], int] = {InputError: 2, RemoteError: 3, ModelError: 4, MediaError: 5}
