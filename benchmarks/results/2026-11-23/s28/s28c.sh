export PYTHONPATH=.
n=$(python -c "import sys; sys.argv=['x']; exec(open('experiments/s28/s28c.py').read().split('def kernel_time')[0]); print(len(CASES))" 2>/dev/null)
echo cases $n
t0=$(date +%s)
for i in $(seq 0 $((n-1))); do python experiments/s28/s28c.py --warm $i > $OUT/warm$i.log 2>&1 & if (( (i+1) % 10 == 0 )); then wait; fi; done; wait
echo warm $(( $(date +%s) - t0 )) s; grep -l "Error\|error" $OUT/warm*.log | head; 
python experiments/s28/s28c.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s28c.log
