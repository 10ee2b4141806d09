//! Deterministic synthetic base/fine-tune checkpoint pairs with realistic delta statistics, for tests and benchmarks.
