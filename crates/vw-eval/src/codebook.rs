//! Codebook statistics: how many codes a quantizer uses and the perplexity of their distribution.

use serde::Serialize;

/// Usage of a discrete codebook over a set of code indices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodebookUsage {
    /// Size of the vocabulary.
    pub vocab: usize,
    /// Codes seen.
    pub total: usize,
    /// Distinct codes seen.
    pub used: usize,
    /// `used / vocab`.
    pub usage: f64,
    /// `exp(H)` of the empirical code distribution (nats): 1 for a single code, `vocab` for uniform use.
    pub perplexity: f64,
}

/// Counts `codes` (each `< vocab`) into usage and perplexity; codes out of range are an error.
pub fn codebook_usage(codes: &[u32], vocab: usize) -> crate::Result<CodebookUsage> {
    let mut counts = vec![0usize; vocab];
    for &c in codes {
        let slot = counts
            .get_mut(c as usize)
            .ok_or_else(|| crate::Error::Invalid(format!("code {c} is outside the vocabulary of {vocab}")))?;
        *slot += 1;
    }
    let total = codes.len();
    let used = counts.iter().filter(|&&n| n > 0).count();
    let entropy: f64 = counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    Ok(CodebookUsage {
        vocab,
        total,
        used,
        usage: if vocab == 0 { 0.0 } else { used as f64 / vocab as f64 },
        perplexity: if total == 0 { 0.0 } else { entropy.exp() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_single() {
        let u = codebook_usage(&[0, 1, 2, 3, 0, 1, 2, 3], 8).unwrap();
        assert_eq!((u.used, u.total), (4, 8));
        assert_eq!(u.usage, 0.5);
        assert!((u.perplexity - 4.0).abs() < 1e-12);
        let s = codebook_usage(&[5, 5, 5], 8).unwrap();
        assert!((s.perplexity - 1.0).abs() < 1e-12);
        // p = (3/4, 1/4): H = -(.75 ln .75 + .25 ln .25)
        let h: f64 = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        let m = codebook_usage(&[1, 1, 1, 2], 4).unwrap();
        assert!((m.perplexity - h.exp()).abs() < 1e-12);
        assert!(codebook_usage(&[8], 8).is_err());
    }
}
