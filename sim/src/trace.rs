//! The run's trace, kept as a running hash (G8): every observation the checker receives is
//! folded in, in the order it happens. Two runs with the same seed and options must end with
//! the same hash, in one process or two; the hash is over plain numbers the simulation chose
//! (client, subscription and sequence numbers, virtual milliseconds), never over addresses,
//! actor ids, hash-map order or wall-clock readings.

/// FNV-1a over 64-bit words: fast, stable across platforms and Rust versions (unlike
/// `std`'s `DefaultHasher`), and more than enough to tell two traces apart.
#[derive(Clone, Debug)]
pub(crate) struct Trace {
    hash: u64,
    records: u64,
    violations: u64,
}

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Trace {
    fn default() -> Self {
        Trace { hash: OFFSET_BASIS, records: 0, violations: 0 }
    }
}

impl Trace {
    /// Folds one observation (a tag and its fields) into the hash.
    pub(crate) fn record(&mut self, words: &[u64]) {
        self.records += 1;
        for &word in words {
            self.hash = (self.hash ^ word).wrapping_mul(PRIME);
        }
        // Separates records, so [1, 2][3] and [1][2, 3] differ.
        self.hash = (self.hash ^ u64::MAX).wrapping_mul(PRIME);
    }

    /// Counts a violation (also part of the trace).
    pub(crate) fn violation(&mut self) {
        self.violations += 1;
        self.record(&[u64::MAX - 1]);
    }

    /// Violations counted.
    pub(crate) fn violations(&self) -> u64 {
        self.violations
    }

    /// Observations recorded.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// The hash so far.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::Trace;

    #[test]
    fn record_boundaries_and_order_change_the_hash() {
        let hash = |records: &[&[u64]]| {
            let mut trace = Trace::default();
            records.iter().for_each(|words| trace.record(words));
            trace.hash()
        };
        assert_eq!(hash(&[&[1, 2], &[3]]), hash(&[&[1, 2], &[3]]));
        assert_ne!(hash(&[&[1, 2], &[3]]), hash(&[&[1], &[2, 3]]));
        assert_ne!(hash(&[&[1], &[2]]), hash(&[&[2], &[1]]));
    }
}
