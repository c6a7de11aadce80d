"""Say hello. The first docstring line is the route's summary."""

METHODS = ["GET"]
TIMEOUT = 5


def main(request):
    return {"message": f"Hello, {request.args.get('name', 'Guest')}!"}
