"""The MetaFormer-style search-space template that tests/test_space.py and tests/test_space_scale.py
fill (mixer slot x norm x connection policy x depth x width), written once."""

TEMPLATE = """\
# A MetaFormer-style search space.
import "std/transformer.arch"

axis B, T

block Mix() : TokenMixer {{
    fc = linear(D)
    return fc(x)
}}

model Net(width: int = {width}, depth: int = {depth}) (x: [B, T, 16]) -> [B, T, width] {{
    embed = linear(width)
    blocks = stack(depth, connect={connect}) {{
        {var}TransformerBlock({mixer}, mlp_ratio=2, norm={norm})
    }}
    return x >> embed >> blocks
}}
"""


def metaformer(width: object, depth: object, connect: str, mixer: str, norm: str, var: str = "") -> str:
    """The template with each place written as given (an option, a `choice(...)`, or for a layer
    that reads its index `var="i => "` and a `[...][i]`)."""
    return TEMPLATE.format(width=width, depth=depth, connect=connect, mixer=mixer, norm=norm, var=var)
