"""Loops of a SASS dump: each backward branch's span, its size and instruction mix."""
import re, sys, collections
for path in sys.argv[1:]:
    lines = open(path).read().splitlines()
    ins = []
    for l in lines:
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?);", l)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    addr_idx = {a: i for i, (a, _) in enumerate(ins)}
    print(path, len(ins))
    for i, (a, t) in enumerate(ins):
        m = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", t)
        mm = re.search(r"BRA .*?(0x[0-9a-f]+)", t)
        if mm:
            tgt = int(mm.group(1), 16)
            if tgt < a and tgt in addr_idx:
                body = ins[addr_idx[tgt]:i + 1]
                ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for _, x in body)
                if len(body) > 60:
                    print(f"  loop {tgt:#x}-{a:#x} n={len(body)} gmma={ops['HGMMA']} mufu={ops['MUFU']} "
                          f"bar={ops['SYNCS']} warpsync={ops['WARPSYNC']} bra={ops['BRA']} fmnmx={ops['FMNMX']} "
                          f"ffma={ops['FFMA']} fmul={ops['FMUL']} fadd={ops['FADD']} fsel={ops['FSEL']} "
                          f"isetp={ops['ISETP']} f2fp={ops['F2FP']} mov={ops['MOV']}")
