"""Initializers and dtypes, as torch spells them. Data, not logic: one row per initializer.

    zeros              nn.init.zeros_(p)
    ones               nn.init.ones_(p)
    const(v)           nn.init.constant_(p, v)
    normal(std, m=0)   nn.init.normal_(p, mean=m, std=std)                 N(m, std^2)
    trunc_normal(s, a=-2, b=2)  nn.init.trunc_normal_(p, std=s, a=a, b=b)  N(0, s^2) cut at a and b
                       (absolute bounds, as torch's and timm's: trunc_normal(0.02) is cut at +-2, i.e. not at all)
    uniform(b)         nn.init.uniform_(p, -b, b)                          U(-b, b)
    kaiming_normal     nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")   N(0, 2 / fan_out)
    xavier_uniform     nn.init.xavier_uniform_ of p as a matrix [out, -1]   U(-a, a), a = sqrt(6 / (fan_in + fan_out))
                       (a convolution's fan_out is its output channels, as DiT initializes its patch embedding)
    eye                nn.init.eye_(p)                                     the identity (2-d)
    onehot(i)          zeros, with 1 at flat index i                       a one-hot vector
    hc_alpha(k)        [e_k | I]: zeros with p[k, 0] = 1, p[:, 1:] = I     hyper-connections' static alpha
    lastcol            zeros with 1 in the last column                      MUDD's "current only" bias
    nm_mask(n, m)      the N:M mask of the weight beside it, by magnitude   a `weight_mask` (@sparse)
    magnitude_mask(d)  its unstructured mask keeping a fraction d          a `weight_mask` (@sparse)
    block_mask(r, c, d)  its r x c block mask keeping a fraction d         a `weight_mask` (@sparse)

A mask's template reads the weight beside it as `{w}`; the functions it calls are in masks.py.
"""

from __future__ import annotations

from archc.ops.registry import INITIALIZERS, init_args

DTYPES = {"f32": "torch.float32", "f16": "torch.float16", "bf16": "torch.bfloat16", "f64": "torch.float64",
          "i64": "torch.int64", "i32": "torch.int32", "i8": "torch.int8", "u8": "torch.uint8", "bool": "torch.bool"}

# name -> template over the tensor `{p}` and the arguments `{0}`, `{1}`, ... (defaults filled in;
# `{n0}` is -arg 0). Where a row has two templates, the first is for the defaults of the others.
INITS: dict[str, tuple[str, ...]] = {
    "zeros": ("nn.init.zeros_({p})",),
    "ones": ("nn.init.ones_({p})",),
    "const": ("nn.init.constant_({p}, {0})",),
    "normal": ("nn.init.normal_({p}, std={0})", "nn.init.normal_({p}, mean={1}, std={0})"),
    "trunc_normal": ("nn.init.trunc_normal_({p}, std={0})", "nn.init.trunc_normal_({p}, std={0}, a={1}, b={2})"),
    "uniform": ("nn.init.uniform_({p}, {n0}, {0})",),
    "kaiming_normal": ("nn.init.kaiming_normal_({p}, mode='fan_out', nonlinearity='relu')",),
    "xavier_uniform": ("with torch.no_grad(): nn.init.xavier_uniform_({p}.view({p}.shape[0], -1))",),
    "eye": ("nn.init.eye_({p})",),
    "onehot": ("with torch.no_grad(): nn.init.zeros_({p}).view(-1)[int({0})] = 1.0",),
    "hc_alpha": ("with torch.no_grad(): nn.init.zeros_({p})[int({0}), 0] = 1.0; nn.init.eye_({p}[:, 1:])",),
    "lastcol": ("with torch.no_grad(): nn.init.zeros_({p})[..., -1] = 1.0",),
    "nm_mask": ("{p}.copy_(nm_mask({w}, {0}, {1}))",),
    "magnitude_mask": ("{p}.copy_(magnitude_mask({w}, {0}))",),
    "block_mask": ("{p}.copy_(block_mask({w}, {0}, {1}, {2}))",),
}
MASK_INITS = ("nm_mask", "magnitude_mask", "block_mask")  # they need masks.py's functions in the file


class InitError(ValueError):
    pass


def init_call(init: str, tensor: str) -> str:
    """The statement that initializes `tensor` (an expression) as the init string `init` says."""
    try:
        name, args = init_args(init)
    except ValueError as err:
        raise InitError(str(err)) from None
    templates = INITS[name]
    defaults = list(INITIALIZERS[name][1:])
    template = templates[0] if len(templates) == 1 or args[1:] == defaults else templates[1]
    if not args:
        return template.format(p=tensor)
    weight = tensor.removesuffix("_mask")  # a mask's weight: `self.weight_mask` -> `self.weight`
    return template.format(*map(repr, args), p=tensor, w=weight, n0=repr(-args[0]))


def empty_call(shape: tuple[int, ...], dtype: str) -> str:
    """`torch.empty(...)` for a tensor of this shape; f32 follows torch's default dtype, as in nn.Linear."""
    dims = ", ".join(map(str, shape)) if shape else "()"
    return f"torch.empty({dims})" if dtype == "f32" else f"torch.empty({dims}, dtype={DTYPES[dtype]})"
