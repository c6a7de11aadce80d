"""Say hello from the root zone."""


def main(request):
    return {"message": f"Hello, {request.args.get('name', 'Guest')}!"}
