"""Echo the JSON body back; shows (body, status, headers) returns."""

METHODS = ["POST"]


def main(request):
    data = request.get_json(silent=True)
    if data is None:
        return {"error": "send a JSON body"}, 400
    return {"received": data}, 201, {"X-Echo": "1"}
