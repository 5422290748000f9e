"""Summarise an ncu source CSV (SASS, warp stall sampling): stalls by reason, and the hottest instructions."""
import csv, sys, collections
for path in sys.argv[1:]:
    rows = list(csv.reader(open(path)))
    hdr = rows[1]
    data = [r for r in rows[2:] if len(r) == len(hdr)]
    ix = {h: i for i, h in enumerate(hdr)}
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    tot = collections.Counter()
    for r in data:
        for h in reasons:
            tot[h] += int(r[ix[h]] or 0)
    allsamp = sum(int(r[ix["Warp Stall Sampling (All Samples)"]] or 0) for r in data)
    print(f"== {path}: {len(data)} instrs, samples {allsamp}")
    print("  " + ", ".join(f"{h[6:]} {100 * v / allsamp:.1f}%" for h, v in tot.most_common(10)))
    # opcode classes
    byop = collections.Counter()
    for r in data:
        op = r[ix["Source"]].strip()
        op = op.split()[0] if not op.startswith("@") else op.split()[1]
        byop[op.split(".")[0]] += int(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
    print("  by opcode: " + ", ".join(f"{o} {100 * v / allsamp:.1f}%" for o, v in byop.most_common(12)))
    hot = sorted(data, key=lambda r: -int(r[ix["Warp Stall Sampling (All Samples)"]] or 0))[:int(sys.argv[0] and 14)]
    for r in hot:
        s = int(r[ix["Warp Stall Sampling (All Samples)"]])
        top = sorted(((int(r[ix[h]] or 0), h[6:]) for h in reasons), reverse=True)[:3]
        print(f"  {r[0][-5:]} {100 * s / allsamp:5.1f}% exec {r[ix['Instructions Executed']]:>9s} {r[ix['Source']].strip()[:60]:60s} "
              + " ".join(f"{h}:{v}" for v, h in top if v))
