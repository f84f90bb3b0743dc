"""The method registry: every fine-tuning method the harness can run, by name (as PEFT's `register_peft_method`
and lm-evaluation-harness's `@register_model` keep theirs).

    from sentiment_lora import methods
    from sentiment_lora.methods.base import Method, MethodConfig

    @methods.register
    class HeadNorm(Method):
        name, title, trains = "head_norm", "last LayerNorm", "the last layer's LayerNorm and the head"
        def attach(self, classifier, cfg, total_steps=None): ...

`register` keeps one instance of the class and stores its schema in Hydra's ConfigStore as method/base_<name>
(conf/method/<name>.yaml starts `defaults: [base_<name>, _self_]`); a method with no YAML in conf/method/ (one
registered from outside the package) is also stored as method/<name>, so `method=<name>` composes. Methods from
other packages plug in by importing a module that calls `register`, or through the entry-point group
`sentiment_lora.methods` (each entry point names such a module), loaded the first time the registry is read.

`get(name)` returns the method (an unknown name is one error line listing the choices), `of(cfg)` the method of a
composed config, `names()` and `all_methods()` every registered one, LoRA (the default) first. The interface every
method implements is methods/base.py's docstring.
"""

from sentiment_lora.methods.base import Method, MethodConfig
from sentiment_lora.methods.registry import (
    DEFAULT,
    ENTRY_POINT_GROUP,
    all_methods,
    get,
    names,
    of,
    recorded,
    register,
    unregister,
)

__all__ = ["DEFAULT", "ENTRY_POINT_GROUP", "Method", "MethodConfig", "all_methods", "get", "names", "of", "recorded",
           "register", "unregister"]  # fmt: skip

# The built-in methods register themselves on import; LoRA first, so listings and tables start with the default.
from sentiment_lora.methods import lora, linear_probe, bitfit, ia3, full  # noqa: E402, F401, I001

# PEFT's other methods that fit an encoder classifier (methods/adapters.py holds what the weight adapters share).
from sentiment_lora.methods import loha, lokr, adalora, vera, oft, boft, hra, fourierft, miss, c3a, road  # noqa: E402, F401, I001
from sentiment_lora.methods import ln_tuning, prompt_tuning, p_tuning  # noqa: E402, F401, I001
from sentiment_lora.methods import vblora, randlora, shira, delora, hira, gralora, waveft, tinylora, beft  # noqa: E402, F401, I001
