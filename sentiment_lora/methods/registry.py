"""The registry itself (the package's __init__ re-exports it): method modules import `register` from here, so the
package imports them without a cycle."""

from __future__ import annotations

from dataclasses import is_dataclass
from importlib.metadata import entry_points

from hydra.core.config_store import ConfigStore

from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import Method, MethodConfig
from sentiment_lora.schema import CONF_DIR

DEFAULT = "lora"  # the method a config or a record without a method ran (runs older than methods, the default)
ENTRY_POINT_GROUP = "sentiment_lora.methods"
_REGISTRY: dict[str, Method] = {}
_plugins_loaded = False


def _conf_has_yaml(name: str) -> bool:
    return (CONF_DIR / "method" / f"{name}.yaml").is_file()


def register(method_class: type[Method]) -> type[Method]:
    """Register a Method subclass (a class decorator); a second class under a registered name is refused."""
    name = method_class.name
    if name in _REGISTRY and type(_REGISTRY[name]) is not method_class:
        raise ValueError(f"method {name!r} is already registered by {type(_REGISTRY[name]).__qualname__}")
    if not (is_dataclass(method_class.schema) and issubclass(method_class.schema, MethodConfig)):
        raise TypeError(f"method {name!r}: its schema must be a dataclass subclassing MethodConfig")
    _REGISTRY[name] = method_class()
    node = _REGISTRY[name].config_node()
    store = ConfigStore.instance()
    store.store(group="method", name=f"base_{name}", node=node)
    if not _conf_has_yaml(name):
        store.store(group="method", name=name, node=node)
    return method_class


def unregister(name: str) -> None:
    """Forget a method (a test's own toy method, once the test is done)."""
    _REGISTRY.pop(name, None)
    repo = ConfigStore.instance().repo.get("method", {})
    repo.pop(f"base_{name}.yaml", None)
    repo.pop(f"{name}.yaml", None)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()  # importing the module registers its methods


def names() -> tuple[str, ...]:
    _load_plugins()
    return tuple(_REGISTRY)


def all_methods() -> tuple[Method, ...]:
    _load_plugins()
    return tuple(_REGISTRY.values())


def get(name: str, key: str = "method.name") -> Method:
    """The registered method `name`; an unknown one is one error line naming `key` and listing the choices."""
    _load_plugins()
    if name not in _REGISTRY:
        raise UserError(f"config {key}: unknown value '{name}'; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def of(cfg) -> Method:
    """The method a composed config runs."""
    return get(cfg.method.name)


def recorded(name: str | None) -> Method | None:
    """The method a run record names (None: the default, for records older than methods); None if this install
    does not have it (a run of a method from a package not installed here)."""
    _load_plugins()
    return _REGISTRY.get(name or DEFAULT)
