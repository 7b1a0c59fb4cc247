class PipelineError(Exception):
    """A problem the user can fix: the message names the file or parameter and what is wrong.

    The CLI prints it without a traceback and exits with status 1.
    """
