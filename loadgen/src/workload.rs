//! The workload: which op comes next (read or write), on which key (uniform or zipfian over a
//! key space), with how large a value; and how keys are spelled on the wire.
//!
//! Owns the random choices of one worker (seeded, reproducible). It never touches sockets,
//! clocks or statistics: the driver asks it for the next op and does the rest.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

/// The kinds of request the loadgen sends; each has its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OpKind {
    Get,
    Set,
}

impl OpKind {
    pub const ALL: [OpKind; 2] = [OpKind::Get, OpKind::Set];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Set => "set",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How keys are drawn from the key space `0..keys`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum KeyDistribution {
    Uniform,
    /// Zipf's law with this exponent (YCSB's default is 0.99): key 0 is the hottest.
    Zipfian {
        skew: f64,
    },
}

impl FromStr for KeyDistribution {
    type Err = String;

    /// `uniform`, `zipfian` (skew 0.99) or `zipfian:SKEW`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "uniform" => Ok(KeyDistribution::Uniform),
            None if text == "zipfian" => Ok(KeyDistribution::Zipfian { skew: 0.99 }),
            Some(("zipfian", skew)) => {
                let skew: f64 = skew
                    .parse()
                    .map_err(|_| format!("zipfian skew {skew:?} is not a number"))?;
                if !(skew.is_finite() && skew > 0.0) {
                    return Err(format!("zipfian skew must be above 0, not {skew}"));
                }
                Ok(KeyDistribution::Zipfian { skew })
            }
            _ => Err(format!(
                "key distribution {text:?}: expected uniform, zipfian or zipfian:SKEW"
            )),
        }
    }
}

impl fmt::Display for KeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDistribution::Uniform => write!(f, "uniform"),
            KeyDistribution::Zipfian { skew } => write!(f, "zipfian:{skew}"),
        }
    }
}

/// Value size in bytes: fixed, or drawn uniformly from an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueSize {
    pub min_bytes: usize,
    pub max_bytes: usize,
}

impl FromStr for ValueSize {
    type Err = String;

    /// `100` or `64..1024` (inclusive).
    fn from_str(text: &str) -> Result<Self, String> {
        let parse = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("value size {t:?} is not a number of bytes"))
        };
        let (min_bytes, max_bytes) = match text.split_once("..") {
            Some((lo, hi)) => (parse(lo)?, parse(hi.trim_start_matches('='))?),
            None => (parse(text)?, parse(text)?),
        };
        if min_bytes == 0 || min_bytes > max_bytes {
            return Err(format!(
                "value size {text:?}: expected N or LO..HI with 0 < LO <= HI"
            ));
        }
        Ok(ValueSize {
            min_bytes,
            max_bytes,
        })
    }
}

impl fmt::Display for ValueSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min_bytes == self.max_bytes {
            write!(f, "{}", self.min_bytes)
        } else {
            write!(f, "{}..{}", self.min_bytes, self.max_bytes)
        }
    }
}

/// What every worker of a run draws from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub keys: u64,
    pub distribution: KeyDistribution,
    /// Share of reads, 0.0..=1.0.
    pub read_ratio: f64,
    pub value_size: ValueSize,
    #[serde(with = "duration_ms")]
    pub ttl: Duration,
}

/// One op to send: its kind, the key's index, and (for a set) the value's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedOp {
    pub kind: OpKind,
    pub key_index: u64,
    pub value_bytes: usize,
}

/// The random choices of one worker.
pub struct OpPicker {
    rng: SmallRng,
    zipf: Option<Zipf<f64>>,
    keys: u64,
    read_ratio: f64,
    value_size: ValueSize,
}

impl OpPicker {
    pub fn new(workload: &Workload, seed: u64) -> OpPicker {
        let keys = workload.keys.max(1);
        let zipf = match workload.distribution {
            KeyDistribution::Uniform => None,
            // Zipf::new refuses only n < 1 or a negative/NaN exponent, both excluded here.
            KeyDistribution::Zipfian { skew } => Zipf::new(keys as f64, skew).ok(),
        };
        OpPicker {
            rng: SmallRng::seed_from_u64(seed),
            zipf,
            keys,
            read_ratio: workload.read_ratio.clamp(0.0, 1.0),
            value_size: workload.value_size,
        }
    }

    pub fn next_key_index(&mut self) -> u64 {
        match &self.zipf {
            // Zipf draws ranks 1..=n as floats; rank 1 is key 0.
            Some(zipf) => (zipf.sample(&mut self.rng) as u64).clamp(1, self.keys) - 1,
            None => self.rng.random_range(0..self.keys),
        }
    }

    pub fn next_value_bytes(&mut self) -> usize {
        let ValueSize {
            min_bytes,
            max_bytes,
        } = self.value_size;
        if min_bytes == max_bytes {
            min_bytes
        } else {
            self.rng.random_range(min_bytes..=max_bytes)
        }
    }

    pub fn next_op(&mut self) -> PlannedOp {
        let kind = if self.rng.random_bool(self.read_ratio) {
            OpKind::Get
        } else {
            OpKind::Set
        };
        let key_index = self.next_key_index();
        let value_bytes = match kind {
            OpKind::Get => 0,
            OpKind::Set => self.next_value_bytes(),
        };
        PlannedOp {
            kind,
            key_index,
            value_bytes,
        }
    }
}

/// Spells key `index` as the loadgen sends it to every target: `key:` and 12 digits.
pub fn write_key(out: &mut Vec<u8>, index: u64) {
    use std::io::Write;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "key:{index:012}");
}

/// The bytes every value is cut from (a set of N bytes sends the first N).
pub fn value_pattern(max_bytes: usize) -> Vec<u8> {
    (0..max_bytes).map(|i| b'a' + (i % 26) as u8).collect()
}

pub(crate) mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(distribution: KeyDistribution, read_ratio: f64) -> Workload {
        Workload {
            keys: 1000,
            distribution,
            read_ratio,
            value_size: "10..20".parse().unwrap(),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn read_ratio_and_value_range_are_honoured() {
        let mut picker = OpPicker::new(&workload(KeyDistribution::Uniform, 0.9), 7);
        let mut reads = 0;
        for _ in 0..100_000 {
            let op = picker.next_op();
            assert!(op.key_index < 1000);
            match op.kind {
                OpKind::Get => reads += 1,
                OpKind::Set => assert!((10..=20).contains(&op.value_bytes)),
            }
        }
        assert!((89_000..91_000).contains(&reads), "{reads} reads of 100000");
    }

    #[test]
    fn zipfian_makes_key_zero_the_hottest() {
        let mut picker = OpPicker::new(&workload("zipfian:0.99".parse().unwrap(), 1.0), 7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[picker.next_key_index() as usize] += 1;
        }
        // With s = 0.99 over 1000 keys, key 0 takes about 13% of draws, key 999 almost none.
        assert!(counts[0] > 10_000, "key 0 drawn {} times", counts[0]);
        assert!(counts[0] > 5 * counts[10]);
        assert!(counts[999] < 100);
    }

    #[test]
    fn keys_and_sizes_parse_and_print() {
        let mut key = Vec::new();
        write_key(&mut key, 42);
        assert_eq!(key, b"key:000000000042");
        assert_eq!("100".parse::<ValueSize>().unwrap().to_string(), "100");
        assert_eq!("1..=5".parse::<ValueSize>().unwrap().to_string(), "1..5");
        assert!("0".parse::<ValueSize>().is_err());
        assert!("9..3".parse::<ValueSize>().is_err());
        assert!("zipfian:-1".parse::<KeyDistribution>().is_err());
        assert!("pareto".parse::<KeyDistribution>().is_err());
    }
}
