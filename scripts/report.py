"""Plain-text report from the root zone."""


def main(request):
    return "report ok\n"
