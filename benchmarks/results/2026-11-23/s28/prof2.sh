source experiments/s28/prof.sh.head
run f64c16k hopper_forward 64 16384 1 fwd
run f64n16k hopper_forward 64 16384 0 fwd
run fp8n16k hopper_forward 128 16384 0 fwd fp8
run f64c2k hopper_forward 64 2048 1 fwd
run f128c16k hopper_forward 128 16384 1 fwd
run b128c16k hopper_backward 128 16384 1 bwd
rm -f $OUT/prof/*.ncu-rep
cd $OUT && tar czf prof.tgz prof && rm -rf prof
