//! A group's definition in the meta store: [`to_record`] and [`from_record`] convert between
//! the [`Source`] and [`Settings`] a group runs with and the flat [`PersistentGroupRecord`]
//! kept in `meta::es_persistent`, so a restarted broker starts every group as it was defined.
//! A stored record that does not parse is reported as unavailable, never guessed at.

use std::time::Duration;

use super::{Settings, Source, StartFrom, Strategy};
use crate::es::{EsError, EventFilter};
use crate::meta::es_persistent::PersistentGroupRecord;

pub(super) fn to_record(
    topic: &str,
    group: &str,
    source: &Source,
    s: &Settings,
) -> PersistentGroupRecord {
    let (source_kind, source, filter_kind) = match source {
        Source::Stream(name) => ("stream", name.clone(), ""),
        Source::Category(prefix) => ("category", prefix.clone(), ""),
        Source::All(None) => ("all", String::new(), ""),
        Source::All(Some(f)) => match f {
            EventFilter::StreamPrefix(p) => ("all", p.clone(), "stream_prefix"),
            EventFilter::StreamRegex(r) => ("all", r.as_str().to_string(), "stream_regex"),
            EventFilter::TypePrefix(p) => ("all", p.clone(), "type_prefix"),
            EventFilter::TypeRegex(r) => ("all", r.as_str().to_string(), "type_regex"),
        },
    };
    let (start_from, start_position) = match s.start_from {
        StartFrom::Start => ("start", 0),
        StartFrom::End => ("end", 0),
        StartFrom::Position(p) => ("position", p),
    };
    PersistentGroupRecord {
        topic: topic.to_string(),
        group: group.to_string(),
        source_kind: source_kind.into(),
        source,
        filter_kind: filter_kind.into(),
        start_from: start_from.into(),
        start_position,
        max_retry_count: s.max_retry_count,
        message_timeout_ms: u32::try_from(s.message_timeout.as_millis()).unwrap_or(u32::MAX),
        buffer_size: s.buffer_size,
        checkpoint_after: s.checkpoint_after,
        strategy: match s.strategy {
            Strategy::RoundRobin => "round_robin",
            Strategy::Pinned => "pinned",
            Strategy::PinnedByCorrelation => "pinned_by_correlation",
        }
        .into(),
    }
}

fn corrupt(what: &str) -> EsError {
    EsError::Unavailable(format!("stored persistent subscription: bad {what}"))
}

pub(super) fn from_record(r: &PersistentGroupRecord) -> Result<(Source, Settings), EsError> {
    let regex = |p: &str| regex::Regex::new(p).map_err(|_| corrupt("filter"));
    let source = match (r.source_kind.as_str(), r.filter_kind.as_str()) {
        ("stream", _) => Source::Stream(r.source.clone()),
        ("category", _) => Source::Category(r.source.clone()),
        ("all", "") => Source::All(None),
        ("all", "stream_prefix") => Source::All(Some(EventFilter::StreamPrefix(r.source.clone()))),
        ("all", "stream_regex") => Source::All(Some(EventFilter::StreamRegex(regex(&r.source)?))),
        ("all", "type_prefix") => Source::All(Some(EventFilter::TypePrefix(r.source.clone()))),
        ("all", "type_regex") => Source::All(Some(EventFilter::TypeRegex(regex(&r.source)?))),
        _ => return Err(corrupt("source")),
    };
    let start_from = match r.start_from.as_str() {
        "start" => StartFrom::Start,
        "end" => StartFrom::End,
        "position" => StartFrom::Position(r.start_position),
        _ => return Err(corrupt("start")),
    };
    let strategy = match r.strategy.as_str() {
        "round_robin" => Strategy::RoundRobin,
        "pinned" => Strategy::Pinned,
        "pinned_by_correlation" => Strategy::PinnedByCorrelation,
        _ => return Err(corrupt("strategy")),
    };
    Ok((
        source,
        Settings {
            start_from,
            max_retry_count: r.max_retry_count,
            message_timeout: Duration::from_millis(u64::from(r.message_timeout_ms)),
            buffer_size: r.buffer_size,
            checkpoint_after: r.checkpoint_after,
            strategy,
        },
    ))
}

pub(super) fn describe(source: &Source) -> String {
    match source {
        Source::Stream(s) => format!("stream:{s}"),
        Source::Category(c) => format!("category:{c}"),
        Source::All(_) => "$all".into(),
    }
}
