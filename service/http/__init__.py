"""The HTTP pipeline and its errors: every request from context to record, the one
error family a request can end in, and the per-script bulkhead.
"""
