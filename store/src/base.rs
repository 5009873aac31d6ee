//! The base image of a volume: what retention folded out of the history.
//!
//! A volume is its base plus the journal records after `base_seq`. Before
//! the first fold the base is *inherited*: zeros, or for a clone the
//! parent's image at the clone's seq. Folding records the newest version of
//! every range the folded records touched in the [`BaseMap`], **where it
//! already is**: data stays in its journal segment (a *journal* run names
//! its location), zeros and trims become zero and hole runs. Nothing is
//! copied; the segments that the map no longer points into are reclaimed.
//! *Cleaning* moves the live data of a segment into the base **file** (a
//! sparse raw image, data at the volume's own offsets) so that the segment
//! can go too. Ranges the map does not cover are still inherited.
//!
//! The map is kept in memory (one entry per run, touching runs merged where
//! they continue each other), with the live bytes it points at in each
//! journal segment, and written whole into the `base-map` file at each fold
//! and clean (docs/journal.md, "Retention").

use std::collections::BTreeMap;

use crate::index::{Piece, Source};
use crate::layout::{LOCATION_POSITION_MASK, split_location};

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
    /// The bytes are a folded record's payload, in its journal segment.
    Journal = 4,
}

impl BaseKind {
    /// Parses a kind byte; `None` for anything unknown.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Data,
            2 => Self::Zero,
            3 => Self::Hole,
            4 => Self::Journal,
            _ => return None,
        })
    }
}

/// One run of the base map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRun {
    pub start: u64,
    pub end: u64,
    pub kind: BaseKind,
    /// [`BaseKind::Journal`]: the journal location of byte `start`; else 0.
    pub location: u64,
}

impl BaseRun {
    /// The journal segment a journal run points into.
    pub fn segment(&self) -> Option<u64> {
        (self.kind == BaseKind::Journal).then(|| split_location(self.location).0)
    }

    fn source(&self, at: u64) -> Source {
        match self.kind {
            BaseKind::Data => Source::BaseFile,
            BaseKind::Zero => Source::Zero { hole: false },
            BaseKind::Hole => Source::Zero { hole: true },
            BaseKind::Journal => Source::Data { location: self.location + (at - self.start) },
        }
    }
}

/// (end, kind, location) of a run, keyed by its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    end: u64,
    kind: BaseKind,
    location: u64,
}

/// Non-overlapping runs `start..end` of the base image and their kind, and
/// the live bytes the journal runs hold in each segment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BaseMap {
    /// start → run; runs never overlap, and touching runs of the same kind
    /// (journal runs: whose locations continue each other) are merged.
    runs: BTreeMap<u64, Run>,
    /// Segment number → bytes of journal runs pointing into it (never 0).
    live: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for BaseMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BaseMap({} runs, {} live segments)", self.runs.len(), self.live.len())
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

    /// Every run, in offset order.
    pub fn iter(&self) -> impl Iterator<Item = BaseRun> + '_ {
        self.runs.iter().map(|(&start, run)| BaseRun {
            start,
            end: run.end,
            kind: run.kind,
            location: run.location,
        })
    }

    /// Bytes the map says are data in the base file.
    pub fn data_bytes(&self) -> u64 {
        self.iter().filter(|run| run.kind == BaseKind::Data).map(|run| run.end - run.start).sum()
    }

    /// Bytes of base data kept in journal segments.
    pub fn journal_bytes(&self) -> u64 {
        self.live.values().sum()
    }

    /// Segment number → live bytes (journal runs pointing into it), for
    /// every segment the map points into.
    pub fn live_segments(&self) -> &BTreeMap<u64, u64> {
        &self.live
    }

    /// Live bytes in segment `number`.
    pub fn live_bytes(&self, number: u64) -> u64 {
        self.live.get(&number).copied().unwrap_or(0)
    }

    /// The journal runs pointing into segment `number`, in offset order.
    pub fn journal_runs(&self, number: u64) -> Vec<BaseRun> {
        if !self.live.contains_key(&number) {
            return Vec::new();
        }
        self.iter().filter(|run| run.segment() == Some(number)).collect()
    }

    /// Approximate heap bytes (a B-tree slot per run).
    pub fn memory_bytes(&self) -> usize {
        self.runs.len() * (size_of::<u64>() + size_of::<Run>() + 8) + self.live.len() * 32
    }

    /// Makes `start..end` of kind `kind` (not [`BaseKind::Journal`]),
    /// replacing whatever was there.
    pub fn set(&mut self, start: u64, end: u64, kind: BaseKind) {
        debug_assert!(kind != BaseKind::Journal, "journal runs need a location");
        self.insert(start, end, Run { end, kind, location: 0 });
    }

    /// Makes `start..end` journal data whose first byte is at journal
    /// `location` (the bytes lie within one record of one segment),
    /// replacing whatever was there.
    pub fn set_journal(&mut self, start: u64, end: u64, location: u64) {
        debug_assert!(
            (location & LOCATION_POSITION_MASK)
                .checked_add(end.saturating_sub(start))
                .is_some_and(|last| last <= LOCATION_POSITION_MASK + 1),
            "a journal run stays within its segment"
        );
        self.insert(start, end, Run { end, kind: BaseKind::Journal, location });
    }

    fn insert(&mut self, start: u64, end: u64, run: Run) {
        if start >= end {
            return;
        }
        self.cut(start, end);
        let (mut start, mut run) = (start, run);
        self.count(run.kind, run.location, end - start, true);
        // Merge with touching neighbours that it continues.
        if let Some((&before, &previous)) = self.runs.range(..start).next_back()
            && previous.end == start
            && continues(before, &previous, &run)
        {
            self.runs.remove(&before);
            start = before;
            run.location = previous.location;
        }
        if let Some(&next) = self.runs.get(&run.end)
            && continues(start, &run, &next)
        {
            self.runs.remove(&run.end);
            run.end = next.end;
        }
        self.runs.insert(start, run);
    }

    /// Adds (or removes) `length` live bytes of a journal run.
    fn count(&mut self, kind: BaseKind, location: u64, length: u64, add: bool) {
        if kind != BaseKind::Journal || length == 0 {
            return;
        }
        let segment = split_location(location).0;
        if add {
            *self.live.entry(segment).or_default() += length;
        } else {
            let live = self.live.get_mut(&segment).expect("a journal run counts in its segment");
            *live -= length;
            if *live == 0 {
                self.live.remove(&segment);
            }
        }
    }

    /// Removes `start..end` from the map (it becomes inherited again).
    fn cut(&mut self, start: u64, end: u64) {
        // A run that starts before `start` and reaches into the range.
        if let Some((&before, &run)) = self.runs.range(..start).next_back()
            && run.end > start
        {
            self.runs.insert(before, Run { end: start, ..run });
            let overlap_end = run.end.min(end);
            self.count(run.kind, run.location, overlap_end - start, false);
            if run.end > end {
                let location = if run.kind == BaseKind::Journal { run.location + (end - before) } else { 0 };
                self.runs.insert(end, Run { end: run.end, kind: run.kind, location });
                return;
            }
        }
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&at, _)| at).collect();
        for at in inside {
            let run = self.runs.remove(&at).expect("listed above");
            self.count(run.kind, run.location, run.end.min(end) - at, false);
            if run.end > end {
                let location = if run.kind == BaseKind::Journal { run.location + (end - at) } else { 0 };
                self.runs.insert(end, Run { end: run.end, kind: run.kind, location });
            }
        }
    }

    /// Appends the pieces of the base over `start..end` in offset order:
    /// [`Source::Data`] (journal runs), [`Source::BaseFile`],
    /// [`Source::Zero`], or [`Source::Base`] where the range is inherited.
    pub fn plan(&self, start: u64, end: u64, out: &mut Vec<Piece>) {
        if start >= end {
            return;
        }
        let mut at = start;
        let first = match self.runs.range(..=start).next_back() {
            Some((&run_start, run)) if run.end > start => run_start,
            _ => start,
        };
        for (&run_start, run) in self.runs.range(first..end) {
            if run_start > at {
                out.push(Piece { offset: at, length: run_start - at, source: Source::Base });
                at = run_start;
            }
            let piece_end = run.end.min(end);
            let run = BaseRun { start: run_start, end: run.end, kind: run.kind, location: run.location };
            out.push(Piece { offset: at, length: piece_end - at, source: run.source(at) });
            at = piece_end;
        }
        if at < end {
            out.push(Piece { offset: at, length: end - at, source: Source::Base });
        }
    }
}

/// Whether `next` (starting where `run`, which starts at `start`, ends)
/// continues `run`: the same kind, and for journal runs the next bytes of
/// the journal.
fn continues(start: u64, run: &Run, next: &Run) -> bool {
    run.kind == next.kind
        && (run.kind != BaseKind::Journal || run.location.checked_add(run.end - start) == Some(next.location))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::location;
    use crate::memory::SimRng;

    /// The map answers what a byte array of (kind, journal location) answers,
    /// after random overlapping sets of every kind; its live bytes per
    /// segment equal the model's count; touching runs that continue each
    /// other stay merged (and journal runs of other locations do not).
    #[test]
    fn map_matches_a_byte_model() {
        for case in 0..500u64 {
            let mut rng = SimRng::new(case);
            let size = 512u64;
            // Per byte: kind (0 inherited) and, for journal bytes, location.
            let mut model = vec![(0u8, 0u64); size as usize];
            let mut map = BaseMap::new();
            for _ in 0..rng.range(1, 40) {
                let start = rng.below(size);
                let end = rng.range(start, size);
                let kind = BaseKind::from_u8(rng.range(1, 4) as u8).unwrap();
                if kind == BaseKind::Journal {
                    // Sometimes continue the journal bytes before `start`.
                    let at = if start > 0 && model[start as usize - 1].0 == 4 && rng.chance(1, 2) {
                        model[start as usize - 1].1 + 1
                    } else {
                        location(rng.below(4), 64 + rng.below(1 << 20))
                    };
                    map.set_journal(start, end, at);
                    for byte in start..end {
                        model[byte as usize] = (4, at + (byte - start));
                    }
                } else {
                    map.set(start, end, kind);
                    model[start as usize..end as usize].fill((kind as u8, 0));
                }
            }
            let start = rng.below(size);
            let end = rng.range(start, size);
            let mut pieces = Vec::new();
            map.plan(start, end, &mut pieces);
            let mut at = start;
            for piece in &pieces {
                assert_eq!(piece.offset, at, "case {case}");
                assert!(piece.length > 0);
                for byte in at..at + piece.length {
                    let expected = match piece.source {
                        Source::BaseFile => (1, 0),
                        Source::Zero { hole: false } => (2, 0),
                        Source::Zero { hole: true } => (3, 0),
                        Source::Data { location } => (4, location + (byte - at)),
                        Source::Base => (0, 0),
                    };
                    assert_eq!(model[byte as usize], expected, "case {case} byte {byte}");
                }
                at += piece.length;
            }
            assert_eq!(at, end);
            let mut live = BTreeMap::new();
            for &(kind, at) in &model {
                if kind == 4 {
                    *live.entry(split_location(at).0).or_insert(0u64) += 1;
                }
            }
            assert_eq!(map.live_segments(), &live, "case {case}");
            assert_eq!(map.journal_bytes(), live.values().sum::<u64>());
            for (&segment, &bytes) in &live {
                let runs = map.journal_runs(segment);
                assert_eq!(runs.iter().map(|run| run.end - run.start).sum::<u64>(), bytes);
            }
            let runs: Vec<_> = map.iter().collect();
            for pair in runs.windows(2) {
                assert!(pair[0].end <= pair[1].start, "overlap in case {case}");
                let continued = pair[0].end == pair[1].start
                    && pair[0].kind == pair[1].kind
                    && (pair[0].kind != BaseKind::Journal
                        || pair[0].location + (pair[0].end - pair[0].start) == pair[1].location);
                assert!(!continued, "unmerged in case {case}: {pair:?}");
            }
        }
    }
}
