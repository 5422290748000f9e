"""Print a SASS address range's instructions (opcodes and operands), optionally filtered by a regex."""
import re, sys
path, lo, hi = sys.argv[1], int(sys.argv[2], 16), int(sys.argv[3], 16)
pat = re.compile(sys.argv[4]) if len(sys.argv) > 4 else None
n = 0
for l in open(path):
    m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?);", l)
    if m and lo <= int(m.group(1), 16) <= hi:
        n += 1
        if pat is None or pat.search(m.group(2)):
            print(n, m.group(1), m.group(2)[:100])
