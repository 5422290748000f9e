python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
for m in flashtron keras; do python3 experiments/s37/gaps.py $m 2>&1 | grep -v Warn; done | tee $OUT/s37c.txt
rm -f $OUT/*.json
