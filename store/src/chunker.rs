//! Content-defined chunking (FastCDC 2020, fastcdc =5.0.0).
//!
//! The parameters are recorded in the store when it is created and used for
//! every later write to it, so that the same content is cut the same way;
//! reading never depends on them (a blob lists its chunks).

use fastcdc::v2020::{self, FastCDC, StreamCDC};

use crate::error::{Result, StoreError};

/// Names the algorithm and crate version whose cut points a store relies on.
pub const CHUNKER_NAME: &str = "fastcdc-v2020/5.0.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Blobs up to this size are stored as one chunk (and never cut).
    pub single_chunk_max: u64,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self {
            min_size: 64 * 1024,
            avg_size: 256 * 1024,
            max_size: 1024 * 1024,
            single_chunk_max: 256 * 1024,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<()> {
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let error = |reason: String| Err(StoreError::ChunkerParams { reason });
        if [min, avg, max].iter().any(|size| size % 2 != 0) {
            return error(format!(
                "sizes must be even (min {min}, avg {avg}, max {max})"
            ));
        }
        let in_bounds = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if !in_bounds {
            return error(format!(
                "min {min} ≤ avg {avg} ≤ max {max} out of fastcdc's bounds"
            ));
        }
        if self.single_chunk_max < u64::from(self.min_size) {
            return error("single_chunk_max must be at least min_size".into());
        }
        Ok(())
    }

    /// `(offset, length)` of each chunk of `data`.
    pub fn cut<'a>(&self, data: &'a [u8]) -> impl Iterator<Item = (usize, usize)> + 'a {
        FastCDC::new(
            data,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        )
        .map(|chunk| (chunk.offset, chunk.length))
    }

    /// Chunks read from a stream, for inputs too big to hold in memory.
    pub fn stream<R: std::io::Read>(&self, source: R) -> StreamCDC<R> {
        StreamCDC::new(
            source,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed xorshift stream: the same bytes on every machine.
    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// Pins the cut points: if this changes, existing stores would stop
    /// deduplicating against new writes. Bump CHUNKER_NAME instead.
    #[test]
    fn cut_points_are_pinned() {
        let data = pseudo_random(4 * 1024 * 1024);
        let cuts: Vec<usize> = ChunkerParams::default()
            .cut(&data)
            .map(|(offset, _)| offset)
            .collect();
        expect_cuts(&cuts);
    }

    fn expect_cuts(cuts: &[usize]) {
        assert_eq!(cuts, PINNED_CUTS, "fastcdc cut points moved");
    }

    const PINNED_CUTS: &[usize] = &[
        0, 477054, 1040333, 1278861, 1583970, 1976211, 2390584, 2474732, 2646563, 3145909, 3512366,
        3877774, 4082364,
    ];

    #[test]
    fn stream_and_slice_agree() {
        let data = pseudo_random(3 * 1024 * 1024 + 17);
        let params = ChunkerParams::default();
        let from_slice: Vec<_> = params.cut(&data).collect();
        let from_stream: Vec<_> = params
            .stream(&data[..])
            .map(|chunk| {
                let chunk = chunk.unwrap();
                (chunk.offset as usize, chunk.length)
            })
            .collect();
        assert_eq!(from_slice, from_stream);
    }

    #[test]
    fn rejects_odd_or_out_of_bounds_params() {
        let odd = ChunkerParams {
            min_size: 65_537,
            ..ChunkerParams::default()
        };
        assert!(odd.validate().is_err());
        let inverted = ChunkerParams {
            min_size: 1 << 20,
            avg_size: 1 << 16,
            ..ChunkerParams::default()
        };
        assert!(inverted.validate().is_err());
        ChunkerParams::default().validate().unwrap();
    }
}
