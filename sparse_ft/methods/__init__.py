from .base import Method, MethodContext
from .registry import build_method, method_class, register

__all__ = ["Method", "MethodContext", "build_method", "method_class", "register"]
