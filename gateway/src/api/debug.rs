//! Profiling in the field, admin role only: where a box's time and memory
//! go, without a rebuild.
//!
//! - `GET /api/v1/debug/pprof/profile?seconds=N&frequency=HZ`: samples the
//!   gateway's threads for N seconds (the `pprof` crate: a `SIGPROF` timer
//!   and a stack walk per sample) and answers the pprof profile format
//!   (`ferrite_proto::pprof`), which `go tool pprof` and other pprof readers
//!   open. One profile at a time (409 otherwise). Needs the `profiling`
//!   feature (in the default build; 501 without it).
//! - `GET /api/v1/debug/memory`: the process's memory from `/proc/self/status`
//!   and where the store's data is (series, blocks, heads, log records).

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;

/// Longest profile: within the API's request timeout.
pub const MAX_SECONDS: u64 = 20;

/// `?seconds=&frequency=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    /// How long to sample, 1 to 20 seconds (default 10).
    #[param(minimum = 1, maximum = 20)]
    pub seconds: Option<u64>,
    /// Samples per second per busy thread, 1 to 1000 (default 99).
    #[param(minimum = 1, maximum = 1000)]
    pub frequency: Option<u32>,
}

/// A CPU profile of the gateway over `seconds`, in the pprof format
/// (protobuf): open it with `go tool pprof` or any pprof reader.
#[utoipa::path(get, operation_id = "getCpuProfile", path = "/api/v1/debug/pprof/profile", tag = "gateway",
    params(ProfileQuery),
    responses(
        (status = 200, description = "A pprof profile (protobuf)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 409, description = "A profile is being taken already", body = super::error::ErrorBody),
        (status = 501, description = "This build has no profiler (the `profiling` feature)", body = super::error::ErrorBody),
    ))]
pub async fn profile(Query(query): Query<ProfileQuery>) -> Result<Response, ApiError> {
    let seconds = query.seconds.unwrap_or(10);
    let frequency = query.frequency.unwrap_or(99);
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(ApiError::bad_request(format!(
            "seconds must be 1 to {MAX_SECONDS}, not {seconds}"
        )));
    }
    if !(1..=1000).contains(&frequency) {
        return Err(ApiError::bad_request(format!(
            "frequency must be 1 to 1000, not {frequency}"
        )));
    }
    let bytes = cpu::profile(std::time::Duration::from_secs(seconds), frequency).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ferrite-cpu.pprof\"",
            ),
        ],
        bytes,
    )
        .into_response())
}

/// The process's memory and the store's layout.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemoryView {
    /// Resident set size now, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// The highest it has been, bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Resident anonymous memory (the heap, stacks), bytes (`RssAnon`).
    pub anonymous_bytes: u64,
    /// Resident file pages (mostly the binary's code), bytes (`RssFile`).
    pub file_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Where the store's data is, if it is open.
    pub store: Option<StoreLayoutView>,
}

/// Where the store's data is (docs/gateway.md, "The store").
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoreLayoutView {
    /// Series (device properties) known.
    pub series: u64,
    /// History blocks on disk.
    pub blocks: u64,
    /// Points in them.
    pub block_points: u64,
    /// Their bytes.
    pub block_bytes: u64,
    /// The bytes of the block files (with those of blocks replaced or
    /// dropped, until their segment goes).
    pub block_file_bytes: u64,
    /// The memory the blocks' index takes, bytes.
    pub block_index_bytes: u64,
    /// Commit records in the log.
    pub log_records: u64,
    /// Their bytes.
    pub log_bytes: u64,
    /// Points waiting in memory to be cut into blocks.
    pub head_points: u64,
    /// The memory those take, bytes.
    pub head_bytes: u64,
}

/// The process's memory (from `/proc/self/status`) and the store's layout.
#[utoipa::path(get, operation_id = "getMemory", path = "/api/v1/debug/memory", tag = "gateway",
    responses((status = 200, description = "Memory figures", body = MemoryView)))]
pub async fn memory(State(state): State<AppState>) -> Result<axum::Json<MemoryView>, ApiError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let store = state.store.clone();
    let layout = crate::store::blocking::spawn(move || store.layout()).await?;
    Ok(axum::Json(MemoryView {
        rss_bytes: field("VmRSS:") * 1024,
        peak_rss_bytes: field("VmHWM:") * 1024,
        anonymous_bytes: field("RssAnon:") * 1024,
        file_bytes: field("RssFile:") * 1024,
        threads: field("Threads:"),
        store: layout.map(|l| StoreLayoutView {
            series: l.series,
            blocks: l.blocks,
            block_points: l.block_points,
            block_bytes: l.block_bytes,
            block_file_bytes: l.block_file_bytes,
            block_index_bytes: l.block_index_bytes,
            log_records: l.records,
            log_bytes: l.record_bytes,
            head_points: l.head_points,
            head_bytes: l.head_bytes,
        }),
    }))
}

#[cfg(feature = "profiling")]
mod cpu {
    //! The profiler, and its report in the pprof format.

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use axum::http::StatusCode;
    use ferrite_proto::pprof::{Function, Label, Line, Location, Profile, Sample, ValueType};
    use prost::Message;

    use super::ApiError;

    /// One profile at a time: the profiler is process-wide.
    static TAKING: AtomicBool = AtomicBool::new(false);

    /// Releases [`TAKING`] however the profile ends.
    struct Taking;

    impl Drop for Taking {
        fn drop(&mut self) {
            TAKING.store(false, Ordering::Release);
        }
    }

    pub async fn profile(duration: Duration, frequency: u32) -> Result<Vec<u8>, ApiError> {
        if TAKING.swap(true, Ordering::AcqRel) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "busy",
                "a profile is being taken already; try again when it is done",
            ));
        }
        let taking = Taking;
        let failed = |e: pprof::Error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "profiler_failed",
                format!("the profiler failed: {e}"),
            )
        };
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(i32::try_from(frequency).unwrap_or(99))
            // Stack walks that start in these can deadlock in the unwinder
            // (the crate's advice).
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(failed)?;
        tokio::time::sleep(duration).await;
        // Symbols are resolved here: seconds of CPU on a large binary.
        tokio::task::spawn_blocking(move || {
            let _taking = taking;
            let report = guard.report().build().map_err(failed)?;
            Ok(encode(&report, frequency).encode_to_vec())
        })
        .await?
    }

    /// Strings of a profile, each once; index 0 is "".
    #[derive(Default)]
    struct Strings {
        table: Vec<String>,
        index: HashMap<String, i64>,
    }

    impl Strings {
        fn id(&mut self, s: &str) -> i64 {
            if self.table.is_empty() {
                self.table.push(String::new());
                self.index.insert(String::new(), 0);
            }
            if let Some(id) = self.index.get(s) {
                return *id;
            }
            let id = self.table.len() as i64;
            self.table.push(s.to_string());
            self.index.insert(s.to_string(), id);
            id
        }
    }

    /// The report as a pprof profile: a location per distinct frame (its
    /// inlined calls as lines), a function per name and file, a sample per
    /// distinct stack and thread.
    fn encode(report: &pprof::Report, frequency: u32) -> Profile {
        let mut strings = Strings::default();
        let period = 1_000_000_000 / i64::from(frequency.max(1));
        let samples = ValueType {
            r#type: strings.id("samples"),
            unit: strings.id("count"),
        };
        let cpu = ValueType {
            r#type: strings.id("cpu"),
            unit: strings.id("nanoseconds"),
        };
        let thread = strings.id("thread");
        let mut functions: HashMap<(i64, i64), u64> = HashMap::new();
        let mut locations: HashMap<Vec<(u64, i64)>, u64> = HashMap::new();
        let mut profile = Profile {
            sample_type: vec![samples, cpu],
            period_type: Some(cpu),
            period,
            ..Profile::default()
        };
        for (frames, count) in &report.data {
            let mut stack = Vec::with_capacity(frames.frames.len());
            for frame in &frames.frames {
                let lines: Vec<(u64, i64)> = frame
                    .iter()
                    .map(|symbol| {
                        let name = strings.id(&symbol.name());
                        let file = strings.id(&symbol.filename());
                        let next = functions.len() as u64 + 1;
                        let function = *functions.entry((name, file)).or_insert_with(|| {
                            profile.function.push(Function {
                                id: next,
                                name,
                                system_name: name,
                                filename: file,
                                start_line: 0,
                            });
                            next
                        });
                        (function, i64::from(symbol.lineno()))
                    })
                    .collect();
                let next = locations.len() as u64 + 1;
                let location = *locations.entry(lines.clone()).or_insert_with(|| {
                    profile.location.push(Location {
                        id: next,
                        line: lines
                            .iter()
                            .map(|(function_id, line)| Line {
                                function_id: *function_id,
                                line: *line,
                            })
                            .collect(),
                        ..Location::default()
                    });
                    next
                });
                stack.push(location);
            }
            let count = i64::try_from(*count).unwrap_or(0);
            profile.sample.push(Sample {
                location_id: stack,
                value: vec![count, count * period],
                label: vec![Label {
                    key: thread,
                    str: strings.id(&frames.thread_name_or_id()),
                    ..Label::default()
                }],
            });
        }
        let timing = &report.timing;
        profile.time_nanos = timing
            .start_time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        profile.duration_nanos = i64::try_from(timing.duration.as_nanos()).unwrap_or(i64::MAX);
        profile.string_table = strings.table;
        profile
    }
}

#[cfg(not(feature = "profiling"))]
mod cpu {
    use std::time::Duration;

    use axum::http::StatusCode;

    use super::ApiError;

    pub async fn profile(_: Duration, _: u32) -> Result<Vec<u8>, ApiError> {
        Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_built",
            "this build has no profiler: build with `--features profiling`",
        ))
    }
}
