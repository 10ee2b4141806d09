# white.py TASK OUTDIR SEED NSR: every compressed linear delta (not the word embeddings, sampled as the default)
# rebuilt as Δ + white Gaussian noise of energy NSR × ‖Δ‖² (per tensor): what an unbiased code whose error is
# white noise of that energy would score. NSR 2.88 / 2.45 = the Gaussian rate-distortion bound at the default's
# 132.5x linear rate (sre / jobs), 8.4 / 6.5 the default sample's, ~4 the VQ's.
import numpy as np, sys, os
task, out, seed, nsr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
sys.argv = ['sim.py', task, 'det', out, str(seed)]
src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sim.py')).read()
src = src.replace("""    if scheme == 'vq' and 'word_embeddings' not in k:""", """    if 'word_embeddings' not in k:
        D = (F[k] - B[k]).astype(np.float64)
        Dh = D + rng.standard_normal(D.shape) * np.sqrt(NSR * (D ** 2).mean())
    if False:""")
NSR = nsr
exec(src)
