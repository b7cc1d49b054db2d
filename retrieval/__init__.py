import os

# OpenMP's idle threads spin while they wait for work. Serving, they spun against Chroma's
# own threads on a 2-core machine and gave single-query embedding stalls of up to ~100 ms
# (search p95 30-68 ms, max 100-135 ms); passive waiting removed them (max ~40 ms) at no cost
# to the LLM's tokens/s (17.1 both ways). Read once, when torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
