# issue 3's bench, the working tree against experiments/base22 (flashtron_base), alternating, two rounds
set -x
for r in 1 2; do
  python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --out $OUT/bench3-new-$r 2>&1 | tail -8
  python -c "import sys; sys.path.insert(0, 'experiments/base22'); from flashtron_base import cli; sys.exit(cli.main(['bench', '--headdims', '128', '--seqlens', '16384', '--causal', 'true', '--impls', 'flashtron,flashtron-window', '--out', '$OUT/bench3-base-$r']))" 2>&1 | tail -8
done
