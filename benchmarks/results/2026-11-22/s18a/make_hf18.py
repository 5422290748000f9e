"""Session 18: variants of flashtron/kernels/hopper_forward.py whose softmax computes some of its exp2 on the FMA
pipes (a polynomial, as FlashAttention-4 does), written to experiments/var18/hf_<name>.py.
  EMU lanes of every 4 elements go through the polynomial (0: all MUFU, 4: none); DEG its degree;
  MUL: exp2 replaced by a multiply (timing only, wrong results)."""
import struct
import sys

src_path = sys.argv[1] if len(sys.argv) > 1 else "flashtron/kernels/hopper_forward.py"
COEF = {3: (0.6932829022407532, 0.2422109693288803, 0.05500892922282219),
        4: (0.6931241750717163, 0.24024099111557007, 0.055906426161527634, 0.009582852944731712),
        5: (0.6931470036506653, 0.24022242426872253, 0.05550733581185341, 0.009671512991189957, 0.001326472731307149)}


def hexf(x):
    return "0f%08X" % struct.unpack("<I", struct.pack("<f", x))[0]


def poly_lane(i, deg):
    """PTX: $i = 2^($(4+i)) on the FMA pipes, for inputs <= 0 (-inf and below -127 give +0)."""
    c = COEF[deg]
    lines = [f"max.ftz.f32 x, ${4 + i}, 0fC2FE0000;",  # -127
             "add.rn.ftz.f32 j, x, 0f4B400000;",  # 1.5 * 2^23: j's low bits hold round(x)
             "sub.rn.ftz.f32 r, j, 0f4B400000;",
             "sub.rn.ftz.f32 f, x, r;",  # f in [-0.5, 0.5]
             f"fma.rn.ftz.f32 p, f, {hexf(c[-1])}, {hexf(c[-2])};"]
    for k in range(deg - 3, -1, -1):
        lines.append(f"fma.rn.ftz.f32 p, p, f, {hexf(c[k])};")
    lines.append("fma.rn.ftz.f32 p, p, f, 0f3F800000;")
    lines += ["mov.b32 e, j;", "shl.b32 e, e, 23;", "mov.b32 b, p;", "add.s32 b, b, e;", f"max.s32 ${i}, b, 0;"]
    return "{\n" + "\n".join(lines) + "\n}"


def asm(emu, deg):
    decl = ".reg .f32 x, j, r, f, p;\n.reg .b32 e, b;\n"
    lanes = []
    for i in range(4):
        if i < emu:
            lanes.append(poly_lane(i, deg))
        else:
            lanes.append(f"ex2.approx.ftz.f32 ${i}, ${4 + i};")
    return "{\n" + decl + "\n".join(lanes) + "\n}"


def make(name, emu, deg, mul=False):
    src = open(src_path).read()
    old = "        probs = gl.exp2(scores * qk_scale_log2 - reference[:, None])\n"
    assert old in src
    if mul:
        new = "        probs = (scores * qk_scale_log2 - reference[:, None]) * 0.001\n"
    else:
        new = ("        probs = gl.inline_asm_elementwise(_EXP2_ASM, \"=r,=r,=r,=r,r,r,r,r\", "
               "[scores * qk_scale_log2 - reference[:, None]], dtype=gl.float32, is_pure=True, pack=4)\n")
    src = src.replace(old, new)
    anchor = "    @gluon.jit\n    def _online_softmax("
    assert anchor in src
    src = src.replace(anchor, f"    _EXP2_ASM = gl.constexpr({asm(emu, deg)!r})\n\n" + anchor)
    src = src.replace('"""The forward on Hopper', f'"""VARIANT {name}: emu={emu} deg={deg} mul={mul}\n\nThe forward on Hopper', 1)
    open(f"experiments/var18/hf_{name}.py", "w").write(src)


make("mufu", 0, 3)       # the same as shipped, through the inline asm (checks the asm path costs nothing)
make("e1d3", 1, 3)
make("e1d4", 1, 4)
make("e2d3", 2, 3)
make("e4d3", 4, 3)
make("mul", 0, 3, mul=True)
