"""Initializers and dtypes, as torch spells them. Data, not logic: one row per initializer.

    zeros            nn.init.zeros_(p)
    ones             nn.init.ones_(p)
    const(v)         nn.init.constant_(p, v)
    normal(std)      nn.init.normal_(p, std=std)                        N(0, std^2)
    trunc_normal(s)  nn.init.trunc_normal_(p, std=s, a=-2s, b=2s)        N(0, s^2) cut at two std
    uniform(b)       nn.init.uniform_(p, -b, b)                          U(-b, b)
    eye              nn.init.eye_(p)                                     the identity (2-d)
    onehot(i)        zeros, with 1 at flat index i                       a one-hot vector
    hc_alpha(k)      [e_k | I]: zeros with p[k, 0] = 1, p[:, 1:] = I     hyper-connections' static alpha
    lastcol          zeros with 1 in the last column                      MUDD's "current only" bias
"""

from __future__ import annotations

import re

DTYPES = {"f32": "torch.float32", "f16": "torch.float16", "bf16": "torch.bfloat16", "f64": "torch.float64",
          "i64": "torch.int64", "i32": "torch.int32", "i8": "torch.int8", "u8": "torch.uint8", "bool": "torch.bool"}

# name -> (number of arguments, template over the tensor `{p}` and the arguments `{0}`, `{n0}` = -arg)
INITS: dict[str, tuple[int, str]] = {
    "zeros": (0, "nn.init.zeros_({p})"),
    "ones": (0, "nn.init.ones_({p})"),
    "const": (1, "nn.init.constant_({p}, {0})"),
    "normal": (1, "nn.init.normal_({p}, std={0})"),
    "trunc_normal": (1, "nn.init.trunc_normal_({p}, std={0}, a={n2}, b={p2})"),
    "uniform": (1, "nn.init.uniform_({p}, {n0}, {0})"),
    "eye": (0, "nn.init.eye_({p})"),
    "onehot": (1, "with torch.no_grad(): nn.init.zeros_({p}).view(-1)[int({0})] = 1.0"),
    "hc_alpha": (1, "with torch.no_grad(): nn.init.zeros_({p})[int({0}), 0] = 1.0; nn.init.eye_({p}[:, 1:])"),
    "lastcol": (0, "with torch.no_grad(): nn.init.zeros_({p})[..., -1] = 1.0"),
}

_CALL = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


class InitError(ValueError):
    pass


def init_call(init: str, tensor: str) -> str:
    """The statement that initializes `tensor` (an expression) as the init string `init` says."""
    m = _CALL.match(init)
    if not m or m.group(1) not in INITS:
        raise InitError(f"unknown initializer '{init}'; known: {', '.join(INITS)}")
    name, arg_text = m.group(1), m.group(2)
    arity, template = INITS[name]
    try:
        args = [float(a) for a in arg_text.split(",")] if arg_text and arg_text.strip() else []
    except ValueError:
        raise InitError(f"initializer '{init}' takes numbers") from None
    if len(args) != arity:
        raise InitError(f"initializer '{name}' takes {arity} argument{'s' if arity != 1 else ''}, got '{init}'")
    if not args:
        return template.format(p=tensor)
    v = args[0]
    return template.format(repr(v), p=tensor, n0=repr(-v), n2=repr(-2 * v), p2=repr(2 * v))


def empty_call(shape: tuple[int, ...], dtype: str) -> str:
    """`torch.empty(...)` for a tensor of this shape; f32 follows torch's default dtype, as in nn.Linear."""
    dims = ", ".join(map(str, shape)) if shape else "()"
    return f"torch.empty({dims})" if dtype == "f32" else f"torch.empty({dims}, dtype={DTYPES[dtype]})"
