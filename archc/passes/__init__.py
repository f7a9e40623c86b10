"""Optimization passes: each a function IR -> PassResult in its own module, run by `manager`.

Clean-up (train and eval): `dce`, `cse`, `fold_constants`. Eval/deploy (weights change, the
transform comes with the result): `strip_dropout`, `fold_bn`, `reparam`, `merge_parallel`.
Annotation only: `mark_epilogues`. The local rewrites share one driver (`rewrite`); `affine`
holds the kernel algebra of re-parameterization and `probe` its eager evaluator.
"""

from archc.passes.result import PassResult, WeightTransform

__all__ = ["PassResult", "WeightTransform"]
