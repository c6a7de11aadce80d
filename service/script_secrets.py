"""`from service.script_secrets import secret`, as scripts written before the layout of
service/ sub-packages import it: the same helper as service.scripts.secrets."""

from service.scripts.secrets import SecretNotFound, secret

__all__ = ["SecretNotFound", "secret"]
