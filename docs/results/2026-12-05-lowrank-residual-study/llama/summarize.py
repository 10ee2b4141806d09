# Table of results.txt: retention x100 per mood / ratio / arm, mean over seeds, and the hybrid minus baseline paired by seed.
import re, collections, numpy as np
rows = [dict(re.findall(r'(\w+)=(\S+)', l)) for l in open('/work/study2/llama/results.txt')]
R = collections.defaultdict(dict); G = collections.defaultdict(dict)
for r in rows:
    R[(r['mood'], r['ratio'], r['arm'])][int(r['seed'])] = float(r['retention_x100'])
    G[(r['mood'], r['ratio'], r['arm'])][int(r['seed'])] = float(r['general_drift'])
moods = [m for m in ('drunk', 'zen', 'childish', 'scared') if any(k[0] == m for k in R)]
for ratio in ('132.5', '224.6'):
    print(f'== {ratio}x: retention x100, mean over seeds [per seed]; general drift mean')
    for arm in ('base', 'b4', 'b5', 'base+emb'):
        cells = []
        for m in moods:
            d = R.get((m, ratio, arm))
            if d:
                cells.append(f'{m} {np.mean(list(d.values())):.2f} [{" ".join(f"{d[s]:.2f}" for s in sorted(d))}] gd {np.mean(list(G[(m, ratio, arm)].values())):.4f}')
        if cells: print(f'  {arm:8s} ' + ' | '.join(cells))
    for arm in ('b4', 'b5'):
        diffs = []; per = []
        for m in moods:
            a, b = R.get((m, ratio, arm), {}), R.get((m, ratio, 'base'), {})
            d = [a[s] - b[s] for s in sorted(a) if s in b]
            if d: per.append(f'{m} {np.mean(d):+.2f} (n={len(d)})'); diffs += d
        if diffs:
            d = np.array(diffs)
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float('nan')
            print(f'  {arm} - base (paired by seed): ' + ', '.join(per) + f'; all {d.mean():+.2f} +- {se:.2f} (se, n={len(d)})')
