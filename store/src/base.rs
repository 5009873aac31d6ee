//! The base image of a volume: what retention folded out of the journal.
//!
//! A volume is its base plus the journal records after `base_seq`. Before
//! the first fold the base is *inherited*: zeros, or for a clone the
//! parent's image at the clone's seq. Folding copies the newest version of
//! every range the folded records touched into the base **file** (a sparse
//! raw image, data at the volume's own offsets) and notes what each range
//! now is in the [`BaseMap`]: data in the file, allocated zeros, or a hole.
//! Ranges the map does not cover are still inherited.
//!
//! The map is kept in memory (one entry per run of the same kind, adjacent
//! runs merged) and written whole into the `base-map` file at each fold
//! (docs/journal.md, "Retention").

use std::collections::BTreeMap;

use crate::index::{Piece, Source};

/// What a range of the base image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BaseKind {
    /// The bytes are in the base file at the same offset.
    Data = 1,
    /// Reads as zeros; allocated (a write-zeroes was folded here).
    Zero = 2,
    /// Reads as zeros; nothing allocated (trimmed, or cut by a shrink).
    Hole = 3,
}

impl BaseKind {
    /// Parses a kind byte; `None` for anything unknown.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Data,
            2 => Self::Zero,
            3 => Self::Hole,
            _ => return None,
        })
    }

    fn source(self) -> Source {
        match self {
            Self::Data => Source::BaseFile,
            Self::Zero => Source::Zero { hole: false },
            Self::Hole => Source::Zero { hole: true },
        }
    }
}

/// Non-overlapping runs `start..end` of the base image and their kind.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BaseMap {
    /// start → (end, kind); runs never overlap, and touching runs of the
    /// same kind are merged.
    runs: BTreeMap<u64, (u64, BaseKind)>,
}

impl std::fmt::Debug for BaseMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BaseMap({} runs)", self.runs.len())
    }
}

impl BaseMap {
    /// An empty map: everything inherited.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Whether nothing was folded yet.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Every run as (start, end, kind), in offset order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, BaseKind)> + '_ {
        self.runs.iter().map(|(&start, &(end, kind))| (start, end, kind))
    }

    /// Bytes the map says are data in the base file.
    pub fn data_bytes(&self) -> u64 {
        self.iter().filter(|run| run.2 == BaseKind::Data).map(|(start, end, _)| end - start).sum()
    }

    /// Approximate heap bytes (a B-tree slot per run).
    pub fn memory_bytes(&self) -> usize {
        self.runs.len() * (size_of::<u64>() + size_of::<(u64, BaseKind)>() + 8)
    }

    /// Makes `start..end` of kind `kind`, replacing whatever was there.
    pub fn set(&mut self, start: u64, end: u64, kind: BaseKind) {
        if start >= end {
            return;
        }
        self.cut(start, end);
        let (mut start, mut end) = (start, end);
        // Merge with touching neighbours of the same kind.
        if let Some((&before, &(before_end, before_kind))) = self.runs.range(..start).next_back()
            && before_end == start
            && before_kind == kind
        {
            self.runs.remove(&before);
            start = before;
        }
        if let Some(&(after_end, after_kind)) = self.runs.get(&end)
            && after_kind == kind
        {
            self.runs.remove(&end);
            end = after_end;
        }
        self.runs.insert(start, (end, kind));
    }

    /// Removes `start..end` from the map (it becomes inherited again).
    fn cut(&mut self, start: u64, end: u64) {
        // A run that starts before `start` and reaches into the range.
        if let Some((&before, &(before_end, kind))) = self.runs.range(..start).next_back()
            && before_end > start
        {
            self.runs.insert(before, (start, kind));
            if before_end > end {
                self.runs.insert(end, (before_end, kind));
                return;
            }
        }
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&at, _)| at).collect();
        for at in inside {
            let (run_end, kind) = self.runs.remove(&at).expect("listed above");
            if run_end > end {
                self.runs.insert(end, (run_end, kind));
            }
        }
    }

    /// Appends the pieces of the base over `start..end` in offset order:
    /// [`Source::BaseFile`], [`Source::Zero`], or [`Source::Base`] where
    /// the range is inherited.
    pub fn plan(&self, start: u64, end: u64, out: &mut Vec<Piece>) {
        if start >= end {
            return;
        }
        let mut at = start;
        let first = match self.runs.range(..=start).next_back() {
            Some((&run_start, &(run_end, _))) if run_end > start => run_start,
            _ => start,
        };
        for (&run_start, &(run_end, kind)) in self.runs.range(first..end) {
            if run_start > at {
                out.push(Piece { offset: at, length: run_start - at, source: Source::Base });
                at = run_start;
            }
            let piece_end = run_end.min(end);
            out.push(Piece { offset: at, length: piece_end - at, source: kind.source() });
            at = piece_end;
        }
        if at < end {
            out.push(Piece { offset: at, length: end - at, source: Source::Base });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::SimRng;

    /// The map answers what a byte array of kinds answers, after random
    /// overlapping sets, and keeps touching runs of one kind merged.
    #[test]
    fn map_matches_a_byte_model() {
        for case in 0..300u64 {
            let mut rng = SimRng::new(case);
            let size = 512u64;
            let mut model = vec![0u8; size as usize];
            let mut map = BaseMap::new();
            for _ in 0..rng.range(1, 40) {
                let start = rng.below(size);
                let end = rng.range(start, size);
                let kind = BaseKind::from_u8(rng.range(1, 3) as u8).unwrap();
                map.set(start, end, kind);
                model[start as usize..end as usize].fill(kind as u8);
            }
            let start = rng.below(size);
            let end = rng.range(start, size);
            let mut pieces = Vec::new();
            map.plan(start, end, &mut pieces);
            let mut at = start;
            for piece in &pieces {
                assert_eq!(piece.offset, at, "case {case}");
                assert!(piece.length > 0);
                let expected = match piece.source {
                    Source::BaseFile => 1,
                    Source::Zero { hole: false } => 2,
                    Source::Zero { hole: true } => 3,
                    Source::Base => 0,
                    Source::Data { .. } => unreachable!(),
                };
                for byte in at..at + piece.length {
                    assert_eq!(model[byte as usize], expected, "case {case} byte {byte}");
                }
                at += piece.length;
            }
            assert_eq!(at, end);
            let runs: Vec<_> = map.iter().collect();
            for pair in runs.windows(2) {
                assert!(pair[0].1 <= pair[1].0, "overlap in case {case}");
                assert!(pair[0].1 < pair[1].0 || pair[0].2 != pair[1].2, "unmerged in case {case}");
            }
        }
    }
}
