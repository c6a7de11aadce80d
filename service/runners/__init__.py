"""Script processes: a script's code never runs in a process that holds the platform's secrets.

    gunicorn worker ──(socketpair)── zygote ──fork──> runner (one script, one call at a time)
           └───────────(socketpair, one per runner)───────┘

The zygote is a fresh interpreter started with an empty environment and no inherited
descriptors; it imports Flask and the runner code once, then forks a runner per script on
request (a cold start costs a fork and the script's import). A runner imports its one
script, describes it, then serves that script's calls until it is killed, retired or
idle too long. Modules: `protocol` (frames on a socket), `zygote` (the template process),
`spawner` (the worker's handle on it), `pool` (the worker's side: warm runners,
deadlines), `stream` (a streamed answer), `failures` (what a call raises), `runner`
(inside a runner), `channel` (a runner's output, log records, `secret()`, `progress()`),
`limits` (rlimits, the runner user), `script_import` (importing one script).
"""
