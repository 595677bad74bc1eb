//! Discovery: which unit ids answer on a Modbus link, and which addresses
//! of each table they let a client read (`ferrite discover modbus`).
//!
//! ```text
//! for each unit id (a few at a time over TCP, one at a time on a bus):
//!     read holding register FIRST: an answer, or any exception but the
//!     gateway's "no such unit" (0x0A, 0x0B), means the unit is there
//! for each unit that answered, for each table:
//!     read blocks from FIRST to LAST; a block refused with an exception is
//!     split in halves until each part reads or is one address
//!     IllegalFunction: the unit has no such table
//! ```
//!
//! Only reads (function codes 1 to 4) go out: nothing is ever written. Every
//! request goes through the driver's own link (one request on the wire at a
//! time per connection, late answers dropped, reconnects), each with a short
//! timeout, and a unit stops being probed after `max_requests`.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use ferrite_core::driver::DriverError;
use ferrite_models::model::Table;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::link::{self, LinkHandle, LinkKey, Op};

/// What to scan and how hard.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// The link.
    pub key: LinkKey,
    /// Unit ids to try, in order.
    pub units: Vec<u8>,
    /// Tables to probe.
    pub tables: Vec<Table>,
    /// First address probed.
    pub first: u16,
    /// Last address probed.
    pub last: u16,
    /// How long one request may take.
    pub timeout: Duration,
    /// Connections used at once (1 on a serial bus).
    pub concurrency: usize,
    /// Requests one unit's range probe may take.
    pub max_requests: usize,
}

/// What one unit holds.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitFound {
    /// Its id.
    pub unit: u8,
    /// Readable addresses of each table (tables it has none of are left
    /// out).
    pub tables: Vec<(Table, Vec<RangeInclusive<u16>>)>,
    /// Requests the probe took.
    pub requests: usize,
    /// What stopped or limited the probe, if anything.
    pub notes: Vec<String>,
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The units that answered, by id, with their ranges.
    pub units: Vec<UnitFound>,
    /// Units that answered only the presence probe: ranges were probed for
    /// the first of them only, since every id answered (a device that
    /// ignores the unit id).
    pub echoes: Vec<u8>,
    /// Requests sent in all.
    pub requests: usize,
    /// Wall time of the scan.
    pub took: Duration,
}

/// More unit ids than this all answering means the device ignores the id.
const ECHO_THRESHOLD: usize = 16;

/// Scans `options.key`.
pub async fn scan(options: &ScanOptions) -> Result<Scan, String> {
    let started = Instant::now();
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let links: Vec<LinkHandle> = (0..options.concurrency.max(1))
        .map(|_| link::spawn(options.key.clone(), &tasks, stop.clone()))
        .collect();
    let result = scan_on(options, &links).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let mut scan = result?;
    scan.took = started.elapsed();
    Ok(scan)
}

async fn scan_on(options: &ScanOptions, links: &[LinkHandle]) -> Result<Scan, String> {
    // Presence: the units split over the links, each link one at a time.
    let chunks: Vec<Vec<u8>> = (0..links.len())
        .map(|i| {
            options
                .units
                .iter()
                .skip(i)
                .step_by(links.len())
                .copied()
                .collect()
        })
        .collect();
    let probes = links.iter().zip(chunks).map(|(link, units)| async move {
        let mut present = Vec::new();
        let mut down = None;
        for unit in units {
            match answers(link, unit, options).await {
                Presence::Here => present.push(unit),
                Presence::Absent => {}
                Presence::Down(why) => down = Some(why),
            }
        }
        (present, down)
    });
    let mut present: Vec<u8> = Vec::new();
    let mut down = None;
    for (found, why) in futures_util::future::join_all(probes).await {
        present.extend(found);
        down = down.or(why);
    }
    // A link that never carried an answer: the scan has nothing to say.
    if let (true, Some(why)) = (present.is_empty(), down) {
        return Err(why);
    }
    present.sort_unstable();
    let mut scan = Scan {
        requests: options.units.len(),
        ..Scan::default()
    };
    let (probed, echoes) = if present.len() == options.units.len() && present.len() > ECHO_THRESHOLD
    {
        (present[..1].to_vec(), present[1..].to_vec())
    } else {
        (present, Vec::new())
    };
    scan.echoes = echoes;
    // Ranges: each unit on one link, the units spread over the links.
    let jobs = links.iter().enumerate().map(|(i, link)| {
        let mine: Vec<u8> = probed
            .iter()
            .skip(i)
            .step_by(links.len())
            .copied()
            .collect();
        async move {
            let mut found = Vec::new();
            for unit in mine {
                found.push(probe_unit(link, unit, options).await);
            }
            found
        }
    });
    for found in futures_util::future::join_all(jobs).await {
        scan.units.extend(found);
    }
    scan.units.sort_by_key(|u| u.unit);
    scan.requests += scan.units.iter().map(|u| u.requests).sum::<usize>();
    Ok(scan)
}

/// What the presence probe of one unit came to.
enum Presence {
    Here,
    Absent,
    /// The link failed: no connection, or an answer that broke it.
    Down(String),
}

/// Whether `unit` answers at all. An exception is an answer, but a
/// gateway's "no such unit" (0x0A, 0x0B); so is a garbled reply, once
/// more on a fresh connection.
async fn answers(link: &LinkHandle, unit: u8, options: &ScanOptions) -> Presence {
    let op = Op::Read {
        table: Table::Holding,
        start: options.first,
        count: 1,
    };
    let mut last = String::new();
    for _ in 0..2 {
        match link.call(unit, op.clone(), options.timeout).await {
            Ok(_) => return Presence::Here,
            Err(e)
                if is_exception(&e, ExceptionCode::GatewayPathUnavailable)
                    || is_exception(&e, ExceptionCode::GatewayTargetDevice) =>
            {
                return Presence::Absent;
            }
            Err(DriverError::Refused(_)) => return Presence::Here,
            Err(DriverError::Timeout(_)) => return Presence::Absent,
            Err(e) => last = e.to_string(),
        }
    }
    Presence::Down(last)
}

fn is_exception(error: &DriverError, code: ExceptionCode) -> bool {
    link::refused_with(error, code)
}

/// How many parts a refused block is split into.
const SPLIT: u32 = 8;

/// Timeouts in a row after which a unit's probe stops.
const MAX_SILENT: usize = 3;

/// Registers per block (a Read carries at most 125) and bits per block.
const REGISTER_BLOCK: u16 = 100;
const BIT_BLOCK: u16 = 800;

/// The readable ranges of every table of `unit`.
async fn probe_unit(link: &LinkHandle, unit: u8, options: &ScanOptions) -> UnitFound {
    let mut found = UnitFound {
        unit,
        tables: Vec::new(),
        requests: 0,
        notes: Vec::new(),
    };
    let mut silent = 0;
    'tables: for &table in &options.tables {
        let block = if table.is_bits() {
            BIT_BLOCK
        } else {
            REGISTER_BLOCK
        };
        let mut ranges: Vec<RangeInclusive<u16>> = Vec::new();
        let mut start = u32::from(options.first);
        let last = u32::from(options.last);
        while start <= last {
            let count = (last - start + 1).min(u32::from(block));
            let mut stack = vec![(start, count)];
            while let Some((at, n)) = stack.pop() {
                if found.requests >= options.max_requests {
                    found.notes.push(format!(
                        "stopped after {} requests, at {table} {at}: raise --max-requests or narrow --addresses",
                        options.max_requests
                    ));
                    merge_into(&mut found.tables, table, ranges);
                    break 'tables;
                }
                found.requests += 1;
                let op = Op::Read {
                    table,
                    start: u16::try_from(at).unwrap_or(u16::MAX),
                    count: u16::try_from(n).unwrap_or(u16::MAX),
                };
                let answer = link.call(unit, op, options.timeout).await;
                silent = if matches!(answer, Err(DriverError::Timeout(_))) {
                    silent + 1
                } else {
                    0
                };
                if silent >= MAX_SILENT {
                    found.notes.push(format!(
                        "no answer to {MAX_SILENT} reads in a row (at {table} {at}); the probe of unit {unit} stopped there"
                    ));
                    merge_into(&mut found.tables, table, ranges);
                    break 'tables;
                }
                match answer {
                    Ok(_) => push_range(&mut ranges, at, at + n - 1),
                    Err(e) if is_exception(&e, ExceptionCode::IllegalFunction) => {
                        continue 'tables;
                    }
                    Err(DriverError::Unreachable(why)) => {
                        found.notes.push(format!("the link went down: {why}"));
                        merge_into(&mut found.tables, table, ranges);
                        break 'tables;
                    }
                    Err(_) => {
                        // Split in up to SPLIT parts, the lowest probed
                        // first (pushed last). An unreadable span costs
                        // about 1.14 reads per address this way (2 with
                        // halves).
                        let parts = n.min(SPLIT);
                        let size = n.div_ceil(parts);
                        let mut pieces = Vec::new();
                        let mut from = at;
                        while from < at + n {
                            let len = size.min(at + n - from);
                            pieces.push((from, len));
                            from += len;
                        }
                        if n > 1 {
                            stack.extend(pieces.into_iter().rev());
                        }
                    }
                }
            }
            start += count;
        }
        merge_into(&mut found.tables, table, ranges);
    }
    found
}

fn push_range(ranges: &mut Vec<RangeInclusive<u16>>, from: u32, to: u32) {
    let (from, to) = (
        u16::try_from(from).unwrap_or(u16::MAX),
        u16::try_from(to).unwrap_or(u16::MAX),
    );
    if let Some(last) = ranges.last_mut()
        && u32::from(*last.end()) + 1 == u32::from(from)
    {
        *last = *last.start()..=to;
        return;
    }
    ranges.push(from..=to);
}

fn merge_into(
    tables: &mut Vec<(Table, Vec<RangeInclusive<u16>>)>,
    table: Table,
    ranges: Vec<RangeInclusive<u16>>,
) {
    if !ranges.is_empty() {
        tables.push((table, ranges));
    }
}

/// `0-9, 100-119`.
pub fn ranges_text(ranges: &[RangeInclusive<u16>]) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_reads_make_one_range() {
        let mut ranges = Vec::new();
        push_range(&mut ranges, 0, 49);
        push_range(&mut ranges, 50, 99);
        push_range(&mut ranges, 120, 120);
        push_range(&mut ranges, 121, 130);
        assert_eq!(ranges, vec![0..=99, 120..=130]);
        assert_eq!(ranges_text(&ranges), "0-99, 120-130");
        assert_eq!(ranges_text(&[7..=7]), "7");
    }
}
