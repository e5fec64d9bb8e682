"""The process exit codes, one per outcome a script may want to tell apart."""

from __future__ import annotations

OK = 0
# The followed task ended FAILURE (its error is on stderr).
FAILURE = 1
# The followed task ended REVOKED (it was cancelled).
REVOKED = 2
# The command line was wrong, or the service refused the request (a 4xx problem detail).
USAGE = 3
# The service could not be reached, answered with a server error, or was lost for too long.
UNAVAILABLE = 4
# Ctrl-C, by the shell convention of 128 + SIGINT.
INTERRUPTED = 130

FOR_STATE = {"SUCCESS": OK, "FAILURE": FAILURE, "REVOKED": REVOKED}
