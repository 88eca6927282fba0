"""The one exception type that the command line turns into a one-line message."""


class HarnessError(Exception):
    """A problem with the user's input or environment.

    The message must fit on one line and name the offending value and what is allowed,
    e.g. ``unknown task 'sst3' (allowed: CoLA, SST-2, ...)``. ``run_study.py`` prints it
    as ``error: <message>`` and exits with status 2, without a traceback.
    """
