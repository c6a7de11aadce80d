"""The /_platform views: health, routes, metrics, keys, jobs' views, the API document
and its docs page, each declaring its guard; and the platform plane that serves them on a
port of their own.
"""
