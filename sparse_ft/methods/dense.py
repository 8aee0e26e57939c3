"""Dense fine-tuning: every parameter trains. The reference every other method is measured against."""

from .base import Method
from .registry import register


@register("dense")
class Dense(Method):
    name = "dense"
