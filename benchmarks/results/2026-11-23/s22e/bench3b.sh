# issue 3's bench: the working tree against experiments/base22 (flashtron_base), alternating, three rounds; prints ms
summary() { python -c "
import json; d = json.load(open('$1/bench.json'))['results']; t = {x['impl']: x['results'] for x in d}
for m in ('fwd', 'fwd+bwd'): print('$2', m, 'causal %.3f ms window %.3f ms ratio %.3fx' % (t['flashtron'][m]['ms'], t['flashtron-window'][m]['ms'], t['flashtron'][m]['ms'] / t['flashtron-window'][m]['ms']))"; }
for r in 1 2 3; do
  python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --out /tmp/b3n$r > /dev/null 2>&1
  summary /tmp/b3n$r "new round $r"
  python -c "import sys; sys.path.insert(0, 'experiments/base22'); from flashtron_base import cli; sys.exit(cli.main(['bench', '--headdims', '128', '--seqlens', '16384', '--causal', 'true', '--impls', 'flashtron,flashtron-window', '--out', '/tmp/b3b$r']))" > /dev/null 2>&1
  summary /tmp/b3b$r "old round $r"
done
