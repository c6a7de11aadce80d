"""Contender 1, the floor: one plain Flask route around the shared script body."""

from __future__ import annotations

from flask import Flask, request
from hello_body import load_main

app = Flask(__name__)
hello_main = load_main()


@app.route("/api/hello.py", methods=["GET", "POST"])
def hello() -> dict:
    return hello_main(request)
