"""Divide a by b: the caller's mistakes are 400s, the script's own are 500s.

A missing or non-numeric `a` or `b` is answered 400 before the script runs; `b=0` is
refused by the script with abort(400); anything the script raises is a 500 whose log
line has the stack trace.
"""

from flask import abort

METHODS = ["GET"]


def main(request, a: float, b: float):
    if b == 0:
        abort(400, description="b must not be 0")
    return {"result": a / b}
