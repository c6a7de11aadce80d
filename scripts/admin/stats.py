"""Admin status check."""


def main(request):
    return {"status": "admin ok"}
