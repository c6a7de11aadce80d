"""Who is calling and what they may do: client addresses, allowlists, keys and
their files, per-key limits and last use, and `allowed()`, the one answer to "may this
caller do this".
"""
