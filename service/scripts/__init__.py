"""Scripts on disk: URL to file (never escaping a zone), what each script declares
(methods, parameters, limits), its description as a runner reported it, its secrets and
the served revision. Never imports the HTTP layer.
"""
