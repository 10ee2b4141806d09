# Predicted (data-free) error of the chosen code vs the plain sparse code: sum over tensors of the rule's V, and
# relative to ||D||^2; also what the best fixed rank would predict.
import sys, pickle, numpy as np
sys.argv=[sys.argv[0]]+sys.argv[1:]
sys.path.insert(0,'/work/study2/llama')
from sim_llama import sim_names, choose
def V(e,budget,b,r):
    N=e['numel']
    if r==0:
        H,rr,qn=e['r0']; bits=0
    else:
        _,bits,H,rr,qn=e[b][r-1]
    p=(budget-bits)/(N*H)
    if p<=0: return np.inf
    p=min(1,p); return rr*(1/p-1)+qn/p
for mood in sys.argv[1].split(','):
    st=pickle.load(open(f'/work/study2/llama/stats-{mood}.pkl','rb'))
    for ratio in ('132.5','224.6'):
        names,rec=sim_names(mood,ratio)
        D2=sum(st[k]['r0'][1] for k in names)
        V0=sum(V(st[k],(rec[k]['bytes']-100)*8,None,0) for k in names)
        out=[f'{mood} {ratio}: sum V(r=0)/||D||^2={V0/D2:.3f}']
        for b in (4,5):
            Vc=sum(V(st[k],(rec[k]['bytes']-100)*8,b,choose(st[k],(rec[k]['bytes']-100)*8,b)[0]) for k in names)
            fixed=[sum(V(st[k],(rec[k]['bytes']-100)*8,b,r) for k in names)/V0 for r in (1,2,4,8)]
            out.append(f'b{b}: chosen/V0={Vc/V0:.4f} fixed r=1,2,4,8 /V0=' + ','.join(f'{x:.3f}' for x in fixed))
        print('  '.join(out))
