export PYTHONPATH=.
pass=0; fail=0
for i in $(seq 1 12); do
  if python -m pytest -q -x tests/test_gpu.py -k "sanitizer_cases" -p no:cacheprovider > $OUT/tree_$i.txt 2>&1; then pass=$((pass+1)); else fail=$((fail+1)); grep -m3 "AssertionError\|Error:" $OUT/tree_$i.txt; fi
done
echo "tree: $pass passed, $fail failed"
cd experiments/base18
pass=0; fail=0
for i in $(seq 1 12); do
  if PYTHONPATH=$PWD python -m pytest -q -x ../../tests/test_gpu.py -k "sanitizer_cases" -p no:cacheprovider > $OUT/base_$i.txt 2>&1; then pass=$((pass+1)); else fail=$((fail+1)); grep -m3 "AssertionError\|Error:" $OUT/base_$i.txt; fi
done
echo "base18 (session start): $pass passed, $fail failed"
python -c "import flashtron, os; print(os.path.dirname(flashtron.__file__))"
