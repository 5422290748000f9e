"""Brute-force check: the number of key tiles whose _query_blocks range holds query block m, against a closed form."""
import itertools, random

ROWS, KEYS = 64, 128

def cdiv(a, b):
    return -(-a // b)

def tdiv(a, b):  # C-style (truncating) division, as in the kernel
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q

def query_blocks(n, sq, sk, left, right, has_left, has_right, varlen):
    shift = sk - sq
    end = cdiv(sq, ROWS)
    if varlen:
        end = end if n * KEYS < sk else 0
    first = 0
    if has_right:
        first = min(tdiv(max(n * KEYS - shift - right, 0), ROWS), end)
    if has_left:
        rows_before_end = max(n * KEYS + KEYS - shift + left, 0)
        end = max(min(end, cdiv(rows_before_end, ROWS)), first)
    if varlen:
        end = max(end, first)
    return first, end

def closed(m, sq, sk, left, right, has_left, has_right, num_n):
    shift = sk - sq
    hi = min(num_n, cdiv(sk, KEYS)) - 1
    if has_right:
        v = m * ROWS + ROWS - 1 + shift + right
        hi = min(hi, -1 if v < 0 else tdiv(v, KEYS))
    lo = 0
    if has_left:
        lo = tdiv(max(m * ROWS + shift - left, 0), KEYS)
    return max(hi - lo + 1, 0)

random.seed(0)
bad = 0
cases = 0
for _ in range(20000):
    sq = random.choice([0, 1, 5, 63, 64, 65, 127, 128, 129, 200, 255, 256, 257, 500, 1000])
    sk = random.choice([0, 1, 5, 63, 64, 65, 127, 128, 129, 200, 255, 256, 257, 500, 1000])
    has_left, has_right = random.random() < 0.5, random.random() < 0.5
    left = random.choice([0, 1, 3, 63, 64, 100, 128, 129, 500, 1024]) if has_left else 0
    right = random.choice([0, 1, 3, 63, 64, 100, 128, 129, 500, 1024]) if has_right else 0
    varlen = random.random() < 0.5
    max_sk = sk if not varlen else sk + random.choice([0, 1, 130, 700])
    num_n = cdiv(max_sk, KEYS)
    counts = [0] * cdiv(sq, ROWS)
    for n in range(num_n):
        f, e = query_blocks(n, sq, sk, left, right, has_left, has_right, varlen)
        if not varlen and n * KEYS >= sk:
            pass
        for m in range(f, e):
            counts[m] += 1
    for m in range(cdiv(sq, ROWS)):
        cases += 1
        c = closed(m, sq, sk, left, right, has_left, has_right, num_n)
        if c != counts[m]:
            bad += 1
            if bad < 10:
                print("mismatch", dict(m=m, sq=sq, sk=sk, left=left, right=right, hl=has_left, hr=has_right, varlen=varlen), counts[m], c)
print("cases", cases, "bad", bad)
