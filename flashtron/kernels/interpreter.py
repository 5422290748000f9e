"""Fixes for running the kernels under Triton's CPU interpreter (TRITON_INTERPRET=1).

triton 3.6's interpreter stores scalars as 1-element numpy arrays and turns
them into loop bounds with int(array), which numpy >= 2.4 refuses ("only
0-dimensional arrays can be converted to Python scalars").  `install()`
wraps the interpreter's tensor patching so that conversion takes the single
element explicitly; with older numpy it changes nothing observable.  The other
known trap, tl.dot on bf16 operands, is handled in `kernels.precision`.
"""

import functools


def install() -> None:
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_flashtron_fixed", False):
        return

    @functools.wraps(original)
    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor._flashtron_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
