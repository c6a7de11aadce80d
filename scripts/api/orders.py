"""Place an order: a JSON body checked against a dataclass.

POST {"customer": "Rico", "items": [{"sku": "A-1", "quantity": 2}]}. A missing field or a
wrong type is answered 400 naming it (`items[0].quantity`); the script gets an `Order`.
"""

import logging
from dataclasses import dataclass

METHODS = ["POST"]

log = logging.getLogger(__name__)


@dataclass
class Item:
    sku: str
    """The article number."""
    quantity: int = 1
    """How many."""


@dataclass
class Order:
    customer: str
    """Who orders."""
    items: list[Item]
    """What they order."""
    note: str = ""


def main(request, order: Order):
    count = sum(item.quantity for item in order.items)
    log.info("order from %s: %d articles", order.customer, count)
    return {"customer": order.customer, "articles": count}, 201
