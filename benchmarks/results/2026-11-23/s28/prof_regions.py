"""Samples inside the innermost loops (backward branches spanning > 60 instructions, none nested inside) vs outside."""
import csv, sys, re, collections
for path in sys.argv[1:]:
    rows = list(csv.reader(open(path)))
    hdr = rows[1]; data = [r for r in rows[2:] if len(r) == len(hdr)]
    ix = {h: i for i, h in enumerate(hdr)}
    S = "Warp Stall Sampling (All Samples)"
    addr = [int(r[0], 16) for r in data]
    base = addr[0]
    pos = {a: i for i, a in enumerate(addr)}
    loops = []
    for i, r in enumerate(data):
        m = re.search(r"BRA\s+(?:`?\(?)(0x[0-9a-f]+)", r[ix["Source"]])
        if m:
            t = int(m.group(1), 16)
            if t < addr[i] and t in pos and i - pos[t] > 60:
                loops.append((pos[t], i))
    inner = [l for l in loops if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]
    tot = sum(int(r[ix[S]] or 0) for r in data)
    print(f"== {path} samples {tot}")
    inside = 0
    for a, b in sorted(inner):
        s = sum(int(r[ix[S]] or 0) for r in data[a:b + 1])
        execs = int(data[b][ix["Instructions Executed"]] or 0)
        inside += s
        n_inst = sum(int(r[ix["Instructions Executed"]] or 0) for r in data[a:b + 1])
        print(f"  loop {addr[a]-base:#x}-{addr[b]-base:#x} n={b-a+1} samples {100*s/tot:5.1f}% back-branches {execs} instr-exec {n_inst}")
    print(f"  outside inner loops {100*(tot-inside)/tot:.1f}%")
