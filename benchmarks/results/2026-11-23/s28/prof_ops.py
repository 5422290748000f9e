"""Per opcode: share of all stall samples, and its main reasons; executed counts."""
import csv, sys, collections
for path in sys.argv[1:]:
    rows = list(csv.reader(open(path)))
    hdr = rows[1]; data = [r for r in rows[2:] if len(r) == len(hdr)]
    ix = {h: i for i, h in enumerate(hdr)}
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    S = "Warp Stall Sampling (All Samples)"
    allsamp = sum(int(r[ix[S]] or 0) for r in data)
    by = collections.defaultdict(collections.Counter); ex = collections.Counter()
    for r in data:
        src = r[ix["Source"]].strip().split()
        op = (src[1] if src[0].startswith("@") else src[0]).split(".")[0]
        for h in reasons:
            by[op][h[6:]] += int(r[ix[h]] or 0)
        ex[op] += int(r[ix["Instructions Executed"]] or 0)
    print(f"== {path} samples {allsamp} executed {sum(ex.values())}")
    for op, c in sorted(by.items(), key=lambda kv: -sum(kv[1].values()))[:12]:
        t = sum(c.values())
        print(f"  {op:10s} {100*t/allsamp:5.1f}%  exec {ex[op]:>11d}  " + ", ".join(f"{h} {100*v/t:.0f}%" for h, v in c.most_common(4)))
