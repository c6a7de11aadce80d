"""What operators see: metrics across workers (and their exemplars), traces, JSON
log lines, and the record of each request. Never imports the HTTP layer.
"""
