"""Op counts inside the first consumer loop found by address range: python loopops.py file.sass 0xSTART 0xEND"""
import re, sys, collections
path, lo, hi = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3], 16)
ops = collections.Counter()
for l in open(path):
    m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?);", l)
    if m and lo <= int(m.group(1), 16) <= hi:
        t = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
        ops[t.split()[0].split(".")[0]] += 1
print(sum(ops.values()), ops.most_common(40))
