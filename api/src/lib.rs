//! What `rewindd` and `rewind` agree on: the syntax of points in time,
//! volume names and sizes, and the control API messages ([`control`]).
//!
//! Parsing here is pure: no clock (relative points stay relative until the
//! daemon resolves them against its own `now`), no IO.

pub mod control;
pub mod point;
pub mod size;

pub use point::{
    ExportName, Point, PointError, format_time, normalize_time, parse_duration, parse_export_name,
    validate_volume_name,
};
pub use size::{SizeError, format_size, format_size_exact, parse_size};

/// Quotes a word for a POSIX shell when it needs it (`#812` would start a
/// comment): for commands printed in messages and hints.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && !word.starts_with('#')
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,#".contains(&b));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}
