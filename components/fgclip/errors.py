"""The errors a user acts on and the exit codes every `fgclip` command shares.

Orchestration decides on retries from these codes alone: a crash (1) may be retried, a
user error (2) or a failed gate (3) never, since running it again cannot fix it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CRASH = 1  # an unexpected exception: Python's own exit code for an uncaught one
    USER_ERROR = 2  # bad params, arguments or input files (ComponentError, argparse usage errors)
    GATE_FAILED = 3  # a quality gate (QC) rejected the data; every output was written first


#: Codes a retry cannot change.
NOT_RETRYABLE = frozenset({ExitCode.USER_ERROR, ExitCode.GATE_FAILED})


class ComponentError(Exception):
    """A failure the user can act on: printed as one clear line, exit code 2."""
