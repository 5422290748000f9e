# Session 31, eighth GPU call: the forward's per-tile profile (fprof.py; experiments/prof31 rebuilt from the working
# tree, make_fprof.py), window (1024, 0) and (256, 0) against full causal, D = 128, 16k.
export PYTHONPATH=.
D=experiments/s31
t0=$(date +%s)
for i in 0 2; do timeout 300 python $D/fprof.py --warm $i > $OUT/fwarm$i.log 2>&1 & done; wait
echo warm $(( $(date +%s) - t0 )) s; grep -il "error" $OUT/fwarm*.log | head -3
timeout 150 python $D/fprof.py 2>&1 | grep -v "arn" | tee $OUT/fprof.log
echo all $(( $(date +%s) - t0 )) s
rm -f $OUT/fwarm*.log
