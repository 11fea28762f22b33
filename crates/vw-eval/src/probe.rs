//! Linear probes: how much of a label (e.g. the ground-truth action of a step) a representation
//! (e.g. the dLDM codes of that step) carries linearly. Multinomial logistic regression trained by
//! full-batch Adam on sparse features — one-hot codes are sparse, and exact full-batch steps keep
//! the probe deterministic without a seed.

use crate::{Error, Result};
use serde::Serialize;

/// Sparse feature rows: each row lists `(feature index, value)`; indices `< dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeFeatures {
    /// One sparse row per example.
    pub rows: Vec<Vec<(usize, f32)>>,
    /// Feature dimension.
    pub dim: usize,
}

impl ProbeFeatures {
    /// One-hot features of discrete codes: `codes[i]` holds the `Q` codes of example i, each
    /// `< vocab`; feature `q * vocab + code` is set, so each query position has its own weights.
    pub fn one_hot(codes: &[Vec<u32>], vocab: usize) -> Result<Self> {
        let q = codes.first().map_or(0, |c| c.len());
        let mut rows = Vec::with_capacity(codes.len());
        for (i, c) in codes.iter().enumerate() {
            if c.len() != q {
                return Err(Error::Invalid(format!("example {i} has {} codes, the first has {q}", c.len())));
            }
            let mut row = Vec::with_capacity(q);
            for (j, &v) in c.iter().enumerate() {
                if v as usize >= vocab {
                    return Err(Error::Invalid(format!("code {v} of example {i} is outside the vocabulary {vocab}")));
                }
                row.push((j * vocab + v as usize, 1.0));
            }
            rows.push(row);
        }
        Ok(Self { rows, dim: q * vocab })
    }

    /// One-hot features of the FSQ digits of discrete codes: code `c` of query `q` sets one feature
    /// per level `k` (its digit `index_digits(c)[k]`), so codes that share a digit share its weight.
    /// This is a linear probe on the code vector itself; [`Self::one_hot`] treats every code as
    /// unrelated to every other, so a code never seen while fitting carries nothing.
    pub fn fsq_digits(codes: &[Vec<u32>], levels: &[usize]) -> Result<Self> {
        let vocab: usize = levels.iter().product();
        let per_query: usize = levels.iter().sum();
        let q = codes.first().map_or(0, |c| c.len());
        let mut rows = Vec::with_capacity(codes.len());
        for (i, c) in codes.iter().enumerate() {
            if c.len() != q {
                return Err(Error::Invalid(format!("example {i} has {} codes, the first has {q}", c.len())));
            }
            let mut row = Vec::with_capacity(q * levels.len());
            for (j, &v) in c.iter().enumerate() {
                if v as usize >= vocab {
                    return Err(Error::Invalid(format!("code {v} of example {i} is outside the vocabulary {vocab}")));
                }
                let mut base = j * per_query;
                for (d, &l) in vw_tensor_kernels::fsq::index_digits(v, levels).into_iter().zip(levels) {
                    row.push((base + d, 1.0));
                    base += l;
                }
            }
            rows.push(row);
        }
        Ok(Self { rows, dim: q * per_query })
    }

    /// The FSQ code vectors of discrete codes as dense features: digit `k` of code `c` of query `q`
    /// becomes `(digit - m) / m` with `m = (levels[k] - 1) / 2`, in [-1, 1] — an affine map of the
    /// vector FSQ gives the renderer for that code. Neighbouring levels of a digit get neighbouring
    /// values, so a probe can carry a direction across levels it never saw (a move a little longer
    /// than any in the fitting set); [`Self::fsq_digits`] gives every level its own weight.
    pub fn fsq_embedding(codes: &[Vec<u32>], levels: &[usize]) -> Result<Self> {
        let vocab: usize = levels.iter().product();
        if levels.iter().any(|&l| l < 2) {
            return Err(Error::Invalid(format!("FSQ levels {levels:?}: every level count must be >= 2")));
        }
        let x = codes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut row = Vec::with_capacity(c.len() * levels.len());
                for &v in c {
                    if v as usize >= vocab {
                        return Err(Error::Invalid(format!(
                            "code {v} of example {i} is outside the vocabulary {vocab}"
                        )));
                    }
                    for (d, &l) in vw_tensor_kernels::fsq::index_digits(v, levels).into_iter().zip(levels) {
                        let m = (l - 1) as f32 / 2.0;
                        row.push((d as f32 - m) / m);
                    }
                }
                Ok(row)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::dense(&x)
    }

    /// The features of `self` followed by those of `other`, row by row (same examples).
    pub fn concat(&self, other: &Self) -> Result<Self> {
        if self.len() != other.len() {
            return Err(Error::Invalid(format!("concat: {} rows vs {}", self.len(), other.len())));
        }
        let rows = self
            .rows
            .iter()
            .zip(&other.rows)
            .map(|(a, b)| a.iter().copied().chain(b.iter().map(|&(j, v)| (self.dim + j, v))).collect())
            .collect();
        Ok(Self { rows, dim: self.dim + other.dim })
    }

    /// Dense features, `x[i]` of length `dim` each.
    pub fn dense(x: &[Vec<f32>]) -> Result<Self> {
        let dim = x.first().map_or(0, |r| r.len());
        if let Some((i, r)) = x.iter().enumerate().find(|(_, r)| r.len() != dim) {
            return Err(Error::Invalid(format!("row {i} has {} features, the first has {dim}", r.len())));
        }
        let rows = x.iter().map(|r| r.iter().copied().enumerate().collect()).collect();
        Ok(Self { rows, dim })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Training settings of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProbeConfig {
    /// Full-batch Adam steps.
    pub epochs: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// L2 penalty on the weights.
    pub weight_decay: f32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { epochs: 300, lr: 0.1, weight_decay: 1e-4 }
    }
}

/// A trained linear probe.
#[derive(Debug, Clone)]
pub struct LinearProbe {
    w: Vec<f32>, // (dim, classes)
    b: Vec<f32>,
    dim: usize,
    classes: usize,
}

impl LinearProbe {
    fn logits(&self, row: &[(usize, f32)], out: &mut [f32]) {
        out.copy_from_slice(&self.b);
        for &(j, v) in row {
            let wj = &self.w[j * self.classes..(j + 1) * self.classes];
            for (o, &w) in out.iter_mut().zip(wj) {
                *o += v * w;
            }
        }
    }

    /// Fits the probe on `labels` (each `< classes`).
    pub fn fit(x: &ProbeFeatures, labels: &[usize], classes: usize, cfg: ProbeConfig) -> Result<Self> {
        if x.len() != labels.len() || x.is_empty() {
            return Err(Error::Invalid(format!(
                "probe needs one label per example: {} rows, {} labels",
                x.len(),
                labels.len()
            )));
        }
        if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Invalid(format!("label {l} is not below the class count {classes}")));
        }
        if let Some(&(j, _)) = x.rows.iter().flatten().find(|(j, _)| *j >= x.dim) {
            return Err(Error::Invalid(format!("feature index {j} is not below the dimension {}", x.dim)));
        }
        let mut p = Self { w: vec![0.0; x.dim * classes], b: vec![0.0; classes], dim: x.dim, classes };
        let n = x.len() as f32;
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let (mut mw, mut vw) = (vec![0.0f32; p.w.len()], vec![0.0f32; p.w.len()]);
        let (mut mb, mut vb) = (vec![0.0f32; classes], vec![0.0f32; classes]);
        let mut z = vec![0.0f32; classes];
        for t in 1..=cfg.epochs {
            let mut gw: Vec<f32> = p.w.iter().map(|w| cfg.weight_decay * w).collect();
            let mut gb = vec![0.0f32; classes];
            for (row, &y) in x.rows.iter().zip(labels) {
                p.logits(row, &mut z);
                softmax(&mut z);
                z[y] -= 1.0;
                for (g, &d) in gb.iter_mut().zip(&z) {
                    *g += d / n;
                }
                for &(j, v) in row {
                    for (g, &d) in gw[j * classes..(j + 1) * classes].iter_mut().zip(&z) {
                        *g += v * d / n;
                    }
                }
            }
            let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
            let adam = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
                for i in 0..p.len() {
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= cfg.lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                }
            };
            adam(&mut p.w, &gw, &mut mw, &mut vw);
            adam(&mut p.b, &gb, &mut mb, &mut vb);
        }
        Ok(p)
    }

    /// Most likely class of each example.
    pub fn predict(&self, x: &ProbeFeatures) -> Result<Vec<usize>> {
        if x.dim != self.dim {
            return Err(Error::Invalid(format!("probe was fit on dimension {}, got {}", self.dim, x.dim)));
        }
        let mut z = vec![0.0f32; self.classes];
        let mut out = Vec::with_capacity(x.len());
        for row in &x.rows {
            if row.iter().any(|&(j, _)| j >= self.dim) {
                return Err(Error::Invalid(format!("a feature index is not below the dimension {}", self.dim)));
            }
            self.logits(row, &mut z);
            let arg = z.iter().enumerate().fold(0, |best, (i, &v)| if v > z[best] { i } else { best });
            out.push(arg);
        }
        Ok(out)
    }

    /// Fraction of examples whose predicted class equals the label.
    pub fn accuracy(&self, x: &ProbeFeatures, labels: &[usize]) -> Result<f64> {
        let pred = self.predict(x)?;
        if pred.len() != labels.len() || pred.is_empty() {
            return Err(Error::Invalid(format!("{} predictions for {} labels", pred.len(), labels.len())));
        }
        Ok(pred.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / pred.len() as f64)
    }
}

fn softmax(z: &mut [f32]) {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in z.iter_mut() {
        *v /= s;
    }
}

/// Train and held-out accuracy of a probe, with the majority-class baseline beside them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProbeReport {
    /// Accuracy on the examples the probe was fit on.
    pub train_accuracy: f64,
    /// Accuracy on held-out examples.
    pub test_accuracy: f64,
    /// Held-out accuracy of always predicting the most common training label.
    pub majority_baseline: f64,
    /// Training examples.
    pub train_examples: usize,
    /// Held-out examples.
    pub test_examples: usize,
}

/// Fits a probe on (train) and scores it on (test).
pub fn probe_accuracy(
    train: (&ProbeFeatures, &[usize]),
    test: (&ProbeFeatures, &[usize]),
    classes: usize,
    cfg: ProbeConfig,
) -> Result<ProbeReport> {
    let p = LinearProbe::fit(train.0, train.1, classes, cfg)?;
    let mut counts = vec![0usize; classes];
    for &l in train.1 {
        counts[l] += 1;
    }
    let major = counts.iter().enumerate().fold(0, |best, (i, &c)| if c > counts[best] { i } else { best });
    let majority_baseline = test.1.iter().filter(|&&l| l == major).count() as f64 / test.1.len().max(1) as f64;
    Ok(ProbeReport {
        train_accuracy: p.accuracy(train.0, train.1)?,
        test_accuracy: p.accuracy(test.0, test.1)?,
        majority_baseline,
        train_examples: train.1.len(),
        test_examples: test.1.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_code_to_label_map_and_fails_on_noise() {
        // Label = code of query 0 mod 3; query 1 is noise. A linear probe on one-hot codes recovers it.
        let mut s = 12345u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u32
        };
        let codes: Vec<Vec<u32>> = (0..300).map(|_| vec![next() % 10, next() % 10]).collect();
        let labels: Vec<usize> = codes.iter().map(|c| (c[0] % 3) as usize).collect();
        let x = ProbeFeatures::one_hot(&codes, 10).unwrap();
        let (xtr, xte) = (
            ProbeFeatures { rows: x.rows[..200].to_vec(), dim: 20 },
            ProbeFeatures { rows: x.rows[200..].to_vec(), dim: 20 },
        );
        let r = probe_accuracy((&xtr, &labels[..200]), (&xte, &labels[200..]), 3, ProbeConfig::default()).unwrap();
        assert_eq!(r.test_accuracy, 1.0);
        assert!(r.majority_baseline < 0.5, "{r:?}");
        // Labels unrelated to the codes: held-out accuracy stays near chance.
        let noise: Vec<usize> = (0..300).map(|_| (next() % 3) as usize).collect();
        let r = probe_accuracy((&xtr, &noise[..200]), (&xte, &noise[200..]), 3, ProbeConfig::default()).unwrap();
        assert!(r.test_accuracy < 0.5, "{r:?}");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(ProbeFeatures::one_hot(&[vec![1, 2], vec![3]], 5).is_err());
        assert!(ProbeFeatures::one_hot(&[vec![5]], 5).is_err());
        let x = ProbeFeatures::dense(&[vec![1.0], vec![0.0]]).unwrap();
        assert!(LinearProbe::fit(&x, &[0], 2, ProbeConfig::default()).is_err());
        assert!(LinearProbe::fit(&x, &[0, 2], 2, ProbeConfig::default()).is_err());
    }

    #[test]
    fn digit_features_generalise_to_unseen_codes_where_one_hot_cannot() {
        // Levels [4, 3]: label = the first digit. Train on codes whose second digit is 0 or 1, test on
        // second digit 2: every test code is new, but its first digit is not.
        let levels = [4usize, 3];
        let code = |a: u32, b: u32| a + 4 * b;
        let train: Vec<Vec<u32>> = (0..40).map(|i| vec![code(i % 4, (i / 4) % 2)]).collect();
        let ytr: Vec<usize> = (0..40).map(|i| i % 4).collect();
        let test: Vec<Vec<u32>> = (0..4).map(|a| vec![code(a, 2)]).collect();
        let yte: Vec<usize> = (0..4).collect();
        let cfg = ProbeConfig::default();
        let digits = probe_accuracy(
            (&ProbeFeatures::fsq_digits(&train, &levels).unwrap(), &ytr),
            (&ProbeFeatures::fsq_digits(&test, &levels).unwrap(), &yte),
            4,
            cfg,
        )
        .unwrap();
        let one_hot = probe_accuracy(
            (&ProbeFeatures::one_hot(&train, 12).unwrap(), &ytr),
            (&ProbeFeatures::one_hot(&test, 12).unwrap(), &yte),
            4,
            cfg,
        )
        .unwrap();
        assert_eq!(digits.test_accuracy, 1.0);
        assert!(one_hot.test_accuracy <= 0.25 + 1e-9, "{}", one_hot.test_accuracy);
        assert_eq!(ProbeFeatures::fsq_digits(&[vec![5]], &levels).unwrap().rows[0], vec![(1, 1.0), (4 + 1, 1.0)]);
        assert!(ProbeFeatures::fsq_digits(&[vec![12]], &levels).is_err());
    }

    #[test]
    fn embedding_features_carry_an_ordered_digit_to_levels_never_fitted() {
        // Levels [8, 5]: label = whether the first digit is in the upper half. Fit on first digits
        // {0, 1, 6, 7}, test on {2, 5}: a level the digit one-hot never saw has no weight, the
        // embedding places it between the fitted ones.
        let levels = [8usize, 5];
        let code = |a: u32, b: u32| a + 8 * b;
        let train: Vec<Vec<u32>> = (0..40).map(|i| vec![code([0, 1, 6, 7][i % 4], (i / 4) as u32 % 5)]).collect();
        let ytr: Vec<usize> = (0..40).map(|i| usize::from(i % 4 >= 2)).collect();
        let test: Vec<Vec<u32>> = (0..10).map(|i| vec![code([2, 5][i % 2], i as u32 / 2)]).collect();
        let yte: Vec<usize> = (0..10).map(|i| i % 2).collect();
        let fit = |f: fn(&[Vec<u32>], &[usize]) -> Result<ProbeFeatures>| {
            let (xtr, xte) = (f(&train, &levels).unwrap(), f(&test, &levels).unwrap());
            probe_accuracy((&xtr, &ytr), (&xte, &yte), 2, ProbeConfig::default()).unwrap().test_accuracy
        };
        assert_eq!(fit(ProbeFeatures::fsq_embedding), 1.0);
        assert!(fit(ProbeFeatures::fsq_digits) <= 0.5 + 1e-9);
        let e = ProbeFeatures::fsq_embedding(&[vec![code(7, 2)]], &levels).unwrap();
        assert_eq!(e.rows[0], vec![(0, 1.0), (1, 0.0)]);
        assert!(ProbeFeatures::fsq_embedding(&[vec![40]], &levels).is_err());
        let both = ProbeFeatures::fsq_digits(&[vec![code(7, 2)]], &levels).unwrap().concat(&e).unwrap();
        assert_eq!((both.dim, both.rows[0].len()), (13 + 2, 4));
        assert_eq!(both.rows[0][2..], [(13, 1.0), (14, 0.0)]);
    }
}
