export PYTHONPATH=.
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv,noheader -lms 100 > $OUT/clocks.log &
S=$!
timeout 200 python experiments/s34/s34j.py 2>&1 | grep -v -i warn | tee $OUT/s34j.log
kill $S
awk -F, '{print $2, $3}' $OUT/clocks.log | sort | uniq -c | sort -rn | head -12
