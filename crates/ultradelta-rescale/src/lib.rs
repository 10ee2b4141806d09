//! Rescaling for UltraDelta: 1/(1-s) factors, exact nuclear norms and trace-norm-guided rescaling (TNGR).
