"""Contender 1, the floor: one plain Flask route, nothing around it."""

from __future__ import annotations

from flask import Flask, request

app = Flask(__name__)


@app.route("/api/hello.py", methods=["GET", "POST"])
def hello() -> dict:
    return {"message": f"Hello, {request.args.get('name', 'Guest')}!"}
