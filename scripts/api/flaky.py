"""Fails on its first run and answers on the retry: RETRIES at work.

Every call is a job (ASYNC). A job's script finds which run it is in
`request.environ["scriptgate.job_attempt"]` (1, then 2, ...) and the job's id in
`request.environ["scriptgate.job_id"]`, the same for no two runs.
"""

ASYNC = True
RETRIES = 2
RETRY_DELAY = 0.5


def main(request):
    attempt = request.environ.get("scriptgate.job_attempt", 1)
    if attempt == 1:
        raise RuntimeError("the first run fails, on purpose")
    return {"attempt": attempt}
