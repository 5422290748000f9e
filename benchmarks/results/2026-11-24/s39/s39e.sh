#!/bin/bash
# Session 39 (e): where the D = 64 backward's warps stall (4k, no mask): stall reasons per warp (raw metrics) for cuDNN's
# kernel and ours, and ours per SASS instruction (SourceCounters).
export PYTHONPATH=.
mkdir -p $OUT/p
for impl in cudnn ours; do
  kern=$([ $impl = cudnn ] && echo "(?i)cudnn.*bprop" || echo hopper_backward_kernel)
  timeout 200 ncu --clock-control none -k regex:$kern --launch-skip 2 --launch-count 1 \
    --section WarpStateStats --section SourceCounters --import-source no -o $OUT/p/$impl -f \
    python experiments/s39/case.py $impl 64 4096 0 > $OUT/p/$impl.run.log 2>&1
  echo "$impl rc $?"
  ncu --import $OUT/p/$impl.ncu-rep --page raw --csv > $OUT/p/$impl.raw.csv 2>&1
  ncu --import $OUT/p/$impl.ncu-rep --page source --csv --print-source sass > $OUT/p/$impl.source.csv 2>$OUT/p/$impl.source.err
done
python - <<'PY'
import csv, os
out = os.environ["OUT"]
for impl in ("cudnn", "ours"):
    rows = list(csv.reader(open(f"{out}/p/{impl}.raw.csv")))
    if len(rows) < 3:
        print(impl, "no raw rows"); continue
    names, units, vals = rows[0], rows[1], rows[2]
    st = [(n, v) for n, v in zip(names, vals) if n.startswith("smsp__average_warps_issue_stalled_") and n.endswith("_per_issue_active.ratio")]
    st = sorted(((float(v.replace(",", "")), n.replace("smsp__average_warps_issue_stalled_", "").replace("_per_issue_active.ratio", "")) for n, v in st if v), reverse=True)
    print(impl, "stall cycles per issued instruction:", ", ".join(f"{n} {v:.2f}" for v, n in st[:12]))
PY
cd $OUT/p && tar czf ../p.tgz *.csv *.run.log && rm -f *.ncu-rep
