//! Embedding-space metrics comparing a compressed fine-tune with the original fine-tune and its base.
//!
//! Pure functions on slices; sums are accumulated in `f64`. Mismatched lengths are caller bugs and panic with a
//! message naming both lengths.

/// Cosine similarity of two vectors, in `[-1, 1]`; 0 when either vector is all zeros.
///
/// # Panics
/// If the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "cosine: vectors of length {} and {}",
        a.len(),
        b.len()
    );
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0) as f32
}

/// Euclidean distance of two vectors.
///
/// # Panics
/// If the lengths differ.
pub fn distance(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "distance: vectors of length {} and {}",
        a.len(),
        b.len()
    );
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// Fidelity: the mean over texts of `cosine(e_c, e_ft)`, the compressed model's embedding against the
/// fine-tuned model's embedding of the same text. 1 means the compressed model reproduces the fine-tune.
/// NaN for empty input.
///
/// # Panics
/// If the two slices, or two paired vectors, differ in length.
pub fn fidelity(compressed: &[Vec<f32>], finetuned: &[Vec<f32>]) -> f64 {
    assert_eq!(
        compressed.len(),
        finetuned.len(),
        "fidelity: {} compressed and {} fine-tuned embeddings",
        compressed.len(),
        finetuned.len()
    );
    if compressed.is_empty() {
        return f64::NAN;
    }
    let sum: f64 = compressed
        .iter()
        .zip(finetuned)
        .map(|(c, f)| f64::from(cosine(c, f)))
        .sum();
    sum / compressed.len() as f64
}

/// Retention: the mean over texts of `1 - ‖e_c - e_ft‖ / ‖e_ft - e_base‖`, the share of the fine-tune's move away
/// from the base that the compressed model keeps. 1 means the compressed model lands exactly on the fine-tune,
/// 0 means it is as far from the fine-tune as the base is (for instance, the base itself); it can be negative.
///
/// Texts on which the fine-tune and the base agree exactly (`‖e_ft - e_base‖ = 0`) carry no information and are
/// skipped; NaN when no text is left.
///
/// # Panics
/// If the three slices, or paired vectors, differ in length.
pub fn retention(compressed: &[Vec<f32>], finetuned: &[Vec<f32>], base: &[Vec<f32>]) -> f64 {
    assert!(
        compressed.len() == finetuned.len() && finetuned.len() == base.len(),
        "retention: {} compressed, {} fine-tuned and {} base embeddings",
        compressed.len(),
        finetuned.len(),
        base.len()
    );
    let (mut sum, mut n) = (0f64, 0usize);
    for ((c, f), b) in compressed.iter().zip(finetuned).zip(base) {
        let moved = distance(f, b);
        if moved == 0.0 {
            continue;
        }
        sum += 1.0 - distance(c, f) / moved;
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Retrieval among pairs: recall@1 and mean reciprocal rank, in `[0, 1]`, NaN for no pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieval {
    /// Share of queries whose own partner ranks first.
    pub recall_at_1: f64,
    /// Mean over queries of `1 / rank` of the own partner.
    pub mrr: f64,
}

/// Retrieval among `n` pairs `(left[i], right[i])`, in both directions: each left text ranks all right texts by
/// cosine and each right text ranks all left texts, `2n` queries in all. The rank of a query's partner is
/// `1 + #{other candidates whose cosine is at least the partner's}` (ties count against the partner, so a
/// model that embeds everything alike ranks last, not first). Both directions count because one direction
/// alone can be won by a "hub" text that is close to everything.
///
/// # Panics
/// If the slices, or vectors, differ in length.
pub fn pair_retrieval(left: &[Vec<f32>], right: &[Vec<f32>]) -> Retrieval {
    assert_eq!(
        left.len(),
        right.len(),
        "pair_retrieval: {} left and {} right embeddings",
        left.len(),
        right.len()
    );
    let n = left.len();
    if n == 0 {
        return Retrieval {
            recall_at_1: f64::NAN,
            mrr: f64::NAN,
        };
    }
    // sim[i][j] = cos(left i, right j)
    let sim: Vec<Vec<f32>> = left
        .iter()
        .map(|l| right.iter().map(|r| cosine(l, r)).collect())
        .collect();
    let (mut hits, mut rr) = (0usize, 0f64);
    for (i, row) in sim.iter().enumerate() {
        let own = row[i];
        let by_left = 1 + row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| j != i && v >= own)
            .count();
        let by_right = 1 + sim
            .iter()
            .enumerate()
            .filter(|&(j, r)| j != i && r[i] >= own)
            .count();
        for rank in [by_left, by_right] {
            hits += usize::from(rank == 1);
            rr += 1.0 / rank as f64;
        }
    }
    Retrieval {
        recall_at_1: hits as f64 / (2 * n) as f64,
        mrr: rr / (2 * n) as f64,
    }
}

/// Mean cosine of each pair's two texts (how close the model puts the texts it should put together). NaN for
/// no pairs.
///
/// # Panics
/// If the slices, or vectors, differ in length.
pub fn pair_cosine(left: &[Vec<f32>], right: &[Vec<f32>]) -> f64 {
    assert_eq!(
        left.len(),
        right.len(),
        "pair_cosine: {} left and {} right embeddings",
        left.len(),
        right.len()
    );
    if left.is_empty() {
        return f64::NAN;
    }
    left.iter()
        .zip(right)
        .map(|(l, r)| f64::from(cosine(l, r)))
        .sum::<f64>()
        / left.len() as f64
}

/// Gain retention of a score: `(model - base) / (finetuned - base)`, the share of the fine-tune's change of
/// the score that the model keeps (1: as the fine-tune, 0: as the base; below 0 or above 1 possible). NaN when
/// the fine-tune did not change the score.
pub fn gain_retention(model: f64, finetuned: f64, base: f64) -> f64 {
    let gain = finetuned - base;
    if gain == 0.0 {
        f64::NAN
    } else {
        (model - base) / gain
    }
}

/// Nearest-class-centroid probe: the centroid of each class is the mean of its training embeddings; each test
/// embedding is assigned the class of the nearest centroid (Euclidean distance; ties go to the smaller class
/// index; classes without training examples are never predicted). Returns the accuracy on the test set in
/// `[0, 1]`, NaN when the test set is empty.
///
/// # Panics
/// If an embedding slice and its label slice differ in length, the training set is empty, or vectors differ in
/// length.
pub fn centroid_probe(
    train: &[Vec<f32>],
    train_y: &[usize],
    test: &[Vec<f32>],
    test_y: &[usize],
) -> f64 {
    assert_eq!(
        train.len(),
        train_y.len(),
        "centroid_probe: {} training embeddings but {} labels",
        train.len(),
        train_y.len()
    );
    assert_eq!(
        test.len(),
        test_y.len(),
        "centroid_probe: {} test embeddings but {} labels",
        test.len(),
        test_y.len()
    );
    assert!(!train.is_empty(), "centroid_probe: empty training set");
    if test.is_empty() {
        return f64::NAN;
    }
    let dim = train[0].len();
    let n_classes = train_y.iter().copied().max().map_or(0, |m| m + 1);
    let mut sums = vec![vec![0f64; dim]; n_classes];
    let mut counts = vec![0usize; n_classes];
    for (x, &y) in train.iter().zip(train_y) {
        assert_eq!(
            x.len(),
            dim,
            "centroid_probe: training embeddings of length {} and {dim}",
            x.len()
        );
        for (s, &v) in sums[y].iter_mut().zip(x) {
            *s += f64::from(v);
        }
        counts[y] += 1;
    }
    let centroids: Vec<(usize, Vec<f64>)> = sums
        .into_iter()
        .zip(&counts)
        .enumerate()
        .filter(|(_, (_, &c))| c > 0)
        .map(|(k, (s, &c))| (k, s.into_iter().map(|v| v / c as f64).collect()))
        .collect();

    let mut correct = 0usize;
    for (x, &y) in test.iter().zip(test_y) {
        assert_eq!(
            x.len(),
            dim,
            "centroid_probe: test embedding of length {}, expected {dim}",
            x.len()
        );
        let mut best = (f64::INFINITY, usize::MAX);
        for (k, c) in &centroids {
            let d: f64 = x
                .iter()
                .zip(c)
                .map(|(&v, &m)| {
                    let e = f64::from(v) - m;
                    e * e
                })
                .sum();
            if d < best.0 {
                best = (d, *k);
            }
        }
        if best.1 == y {
            correct += 1;
        }
    }
    correct as f64 / test.len() as f64
}

/// Index of the largest value (the first one on ties; NaN never wins unless every value is NaN). 0 for empty.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] || (values[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_by_hand() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-7);
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-7);
        assert!((cosine(&[1.0, 2.0], &[-1.0, -2.0]) + 1.0).abs() < 1e-7);
        // (3*4 + 4*0) / (5 * 4) = 0.6
        assert!((cosine(&[3.0, 4.0], &[4.0, 0.0]) - 0.6).abs() < 1e-7);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn fidelity_by_hand() {
        let ft = vec![vec![1.0, 0.0], vec![3.0, 4.0]];
        let c = vec![vec![0.0, 1.0], vec![4.0, 0.0]];
        // cosines 0 and 0.6 → 0.3
        assert!((fidelity(&c, &ft) - 0.3).abs() < 1e-7);
        assert!((fidelity(&ft, &ft) - 1.0).abs() < 1e-7);
        assert!(fidelity(&[], &[]).is_nan());
    }

    #[test]
    fn retention_by_hand() {
        let base = vec![vec![0.0, 0.0], vec![1.0, 1.0], vec![5.0, 5.0]];
        let ft = vec![vec![4.0, 0.0], vec![1.0, 3.0], vec![5.0, 5.0]];
        // text 0: moved 4, compressed 1 away → 0.75; text 1: moved 2, compressed 3 away → -0.5;
        // text 2: the fine-tune did not move, skipped.
        let c = vec![vec![3.0, 0.0], vec![1.0, 0.0], vec![9.0, 9.0]];
        assert!((retention(&c, &ft, &base) - 0.125).abs() < 1e-12);
        assert!((retention(&ft, &ft, &base) - 1.0).abs() < 1e-12);
        assert!(retention(&base[..2], &ft[..2], &base[..2]).abs() < 1e-12);
        assert!(retention(&base[2..], &ft[2..], &base[2..]).is_nan());
    }

    #[test]
    fn centroid_probe_by_hand() {
        let train = vec![
            vec![0.0, 0.0],
            vec![2.0, 0.0],
            vec![10.0, 10.0],
            vec![10.0, 12.0],
        ];
        let train_y = vec![0, 0, 2, 2];
        // centroids: class 0 at (1, 0), class 2 at (10, 11); class 1 has no examples.
        let test = vec![
            vec![1.0, 1.0],
            vec![9.0, 9.0],
            vec![6.0, 6.0],
            vec![0.0, 0.0],
        ];
        let test_y = vec![0, 2, 0, 1];
        // (6,6): 25+36=61 to class 0, 16+25=41 to class 2 → predicts 2 (wrong); (0,0) → 0 (wrong: label 1).
        assert!((centroid_probe(&train, &train_y, &test, &test_y) - 0.5).abs() < 1e-12);
        assert!(centroid_probe(&train, &train_y, &[], &[]).is_nan());
        // Ties go to the smaller class index.
        let train = vec![vec![-1.0], vec![1.0]];
        assert_eq!(centroid_probe(&train, &[1, 0], &[vec![0.0]], &[0]), 1.0);
        assert_eq!(centroid_probe(&train, &[0, 1], &[vec![0.0]], &[0]), 1.0);
    }

    #[test]
    #[should_panic(expected = "3 training embeddings but 2 labels")]
    fn centroid_probe_checks_lengths() {
        centroid_probe(&[vec![0.0], vec![1.0], vec![2.0]], &[0, 1], &[], &[]);
    }

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[]), 0);
        assert!((distance(&[0.0, 3.0], &[4.0, 0.0]) - 5.0).abs() < 1e-12);
    }
    #[test]
    fn pair_retrieval_by_hand() {
        // Three pairs in 2-D. cos(l_i, r_j):
        //          r0=(1,0)  r1=(0,1)  r2=(1,1)/√2
        // l0=(1,0)   1         0         0.7071
        // l1=(1,2)   0.4472    0.8944    0.9487
        // l2=(1,1)   0.7071    0.7071    1
        // left→right: l0 rank 1, l1 rank 2 (r2 beats r1), l2 rank 1.
        // right→left: r0 rank 1, r1 rank 1 (l1 0.8944 > l2 0.7071), r2 rank 1 (l2 1 > l1 0.9487).
        let left = vec![vec![1.0, 0.0], vec![1.0, 2.0], vec![1.0, 1.0]];
        let right = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let r = pair_retrieval(&left, &right);
        assert!((r.recall_at_1 - 5.0 / 6.0).abs() < 1e-12);
        assert!((r.mrr - 5.5 / 6.0).abs() < 1e-12);
        // Ties count against the partner: identical embeddings everywhere rank every partner last (rank 3).
        let same = vec![vec![1.0, 1.0]; 3];
        let r = pair_retrieval(&same, &same);
        assert_eq!(r.recall_at_1, 0.0);
        assert!((r.mrr - 1.0 / 3.0).abs() < 1e-12);
        assert!(pair_retrieval(&[], &[]).mrr.is_nan());
    }

    #[test]
    fn pair_cosine_and_gain_retention_by_hand() {
        let left = vec![vec![1.0, 0.0], vec![3.0, 4.0]];
        let right = vec![vec![0.0, 1.0], vec![4.0, 0.0]];
        assert!((pair_cosine(&left, &right) - 0.3).abs() < 1e-7);
        assert!(pair_cosine(&[], &[]).is_nan());
        assert!((gain_retention(0.7, 0.9, 0.5) - 0.5).abs() < 1e-12);
        assert!((gain_retention(0.9, 0.9, 0.5) - 1.0).abs() < 1e-12);
        assert!((gain_retention(0.3, 0.9, 0.5) + 0.5).abs() < 1e-12);
        assert!(gain_retention(0.3, 0.5, 0.5).is_nan());
    }
}
