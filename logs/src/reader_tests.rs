use super::*;
use crate::record::encode;
use crate::test_dir::TempDir;
use crate::{LogOptions, LogWriter};
use std::fs::{self, OpenOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

const T0: u64 = 1_796_231_045;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, 5_000)
}

/// Appends records `(stream, log, seconds after T0)` to a file of the log.
fn append(dir: &TempDir, name: &str, records: &[(Stream, &str, u64)]) {
    let path = dir.0.join(name);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for (stream, log, secs) in records {
        file.write_all(&encode(*stream, log.as_bytes(), at(T0 + secs)))
            .unwrap();
    }
}

fn stdout_lines(names: &[(&str, u64)]) -> Vec<(Stream, String, u64)> {
    let lines = names
        .iter()
        .map(|(log, secs)| (Stream::Stdout, format!("{log}\n"), *secs));
    lines.collect()
}

fn append_lines(dir: &TempDir, name: &str, lines: &[(&str, u64)]) {
    let owned = stdout_lines(lines);
    let borrowed: Vec<(Stream, &str, u64)> =
        owned.iter().map(|(s, l, t)| (*s, l.as_str(), *t)).collect();
    append(dir, name, &borrowed);
}

/// What `read_logs` prints on stdout and stderr, without following.
fn read(dir: &TempDir, options: ReadOptions) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    read_logs(&dir.0, "c1", options, &mut out, &mut err, &|| true).unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn stdout(dir: &TempDir, options: ReadOptions) -> String {
    read(dir, options).0
}

/// Three files: `.2` holds a b, `.1` c d, the current file e.
fn rotated_log(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    append_lines(&dir, "c1-json.log.2", &[("a", 0), ("b", 1)]);
    append_lines(&dir, "c1-json.log.1", &[("c", 2), ("d", 3)]);
    append_lines(&dir, "c1-json.log", &[("e", 4)]);
    dir
}

#[test]
fn streams_go_to_out_and_err() {
    let dir = TempDir::new("read-streams");
    let records = [
        (Stream::Stdout, "one\n", 0),
        (Stream::Stderr, "warn\n", 1),
        (Stream::Stdout, "two", 2),
    ];
    append(&dir, "c1-json.log", &records);
    assert_eq!(
        read(&dir, ReadOptions::default()),
        ("one\ntwo".into(), "warn\n".into())
    );
}

#[test]
fn no_log_prints_nothing() {
    let dir = TempDir::new("read-none");
    assert_eq!(
        read(&dir, ReadOptions::default()),
        (String::new(), String::new())
    );
    let missing = TempDir(dir.0.join("missing"));
    assert_eq!(stdout(&missing, ReadOptions::default()), "");
}

#[test]
fn oldest_file_first() {
    let dir = rotated_log("read-order");
    assert_eq!(stdout(&dir, ReadOptions::default()), "a\nb\nc\nd\ne\n");
}

#[test]
fn tail_across_rotated_files() {
    let dir = rotated_log("read-tail");
    let tail = |n| ReadOptions {
        tail: Some(n),
        ..ReadOptions::default()
    };
    assert_eq!(stdout(&dir, tail(0)), "");
    assert_eq!(stdout(&dir, tail(1)), "e\n");
    assert_eq!(stdout(&dir, tail(2)), "d\ne\n");
    assert_eq!(stdout(&dir, tail(4)), "b\nc\nd\ne\n");
    assert_eq!(stdout(&dir, tail(100)), "a\nb\nc\nd\ne\n");
}

#[test]
fn tail_counts_stderr_records_too() {
    let dir = TempDir::new("read-tail-err");
    let records = [
        (Stream::Stdout, "1\n", 0),
        (Stream::Stderr, "2\n", 1),
        (Stream::Stdout, "3\n", 2),
    ];
    append(&dir, "c1-json.log", &records);
    let options = ReadOptions {
        tail: Some(2),
        ..ReadOptions::default()
    };
    assert_eq!(read(&dir, options), ("3\n".into(), "2\n".into()));
}

#[test]
fn timestamps_prefix_each_record() {
    let dir = TempDir::new("read-timestamps");
    append(
        &dir,
        "c1-json.log",
        &[(Stream::Stdout, "hello\n", 0), (Stream::Stderr, "x", 1)],
    );
    let options = ReadOptions {
        timestamps: true,
        ..ReadOptions::default()
    };
    let (out, err) = read(&dir, options);
    assert_eq!(out, "2026-12-02T17:04:05.000005000Z hello\n");
    assert_eq!(err, "2026-12-02T17:04:06.000005000Z x");
}

#[test]
fn since_and_until() {
    let dir = rotated_log("read-since");
    let options = ReadOptions {
        since: Some(at(T0 + 1)),
        until: Some(at(T0 + 3)),
        ..ReadOptions::default()
    };
    assert_eq!(stdout(&dir, options.clone()), "b\nc\nd\n");
    let tail = ReadOptions {
        tail: Some(2),
        ..options
    };
    assert_eq!(stdout(&dir, tail), "c\nd\n");
}

#[test]
fn malformed_long_and_partial_lines_are_skipped() {
    let dir = TempDir::new("read-malformed");
    append_lines(&dir, "c1-json.log", &[("ok1", 0)]);
    let path = dir.0.join("c1-json.log");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"garbage\n{\"log\":\"x\"}\n\n\xff\xfe\n")
        .unwrap();
    let long = format!(
        "{{\"log\":\"{}\",\"time\":\"2026-12-02T17:04:05Z\"}}\n",
        "y".repeat(2 << 20)
    );
    file.write_all(long.as_bytes()).unwrap();
    append_lines(&dir, "c1-json.log", &[("ok2", 1)]);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"log\":\"half").unwrap();
    assert_eq!(stdout(&dir, ReadOptions::default()), "ok1\nok2\n");
}

/// An output whose writes fail with `kind` once `fail_after` writes went through.
struct FailingOutput {
    writes: usize,
    fail_after: usize,
    kind: io::ErrorKind,
}

impl Write for FailingOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.writes >= self.fail_after {
            return Err(self.kind.into());
        }
        self.writes += 1;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_closed_output_stops_quietly_other_errors_do_not() {
    let dir = rotated_log("read-epipe");
    let mut out = FailingOutput {
        writes: 0,
        fail_after: 2,
        kind: io::ErrorKind::BrokenPipe,
    };
    let options = ReadOptions {
        follow: true,
        ..ReadOptions::default()
    };
    // With follow and a writer that is never done: only the closed output ends it.
    read_logs(&dir.0, "c1", options, &mut out, &mut io::sink(), &|| false).unwrap();
    assert_eq!(out.writes, 2);
    let mut out = FailingOutput {
        writes: 0,
        fail_after: 0,
        kind: io::ErrorKind::Other,
    };
    let result = read_logs(
        &dir.0,
        "c1",
        ReadOptions::default(),
        &mut out,
        &mut io::sink(),
        &|| true,
    );
    assert!(matches!(result, Err(ReadError::Output(_))), "{result:?}");
}

/// An output shared with the test while a follower writes into it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Follows the log in a thread while `write` writes it; `done` turns true once `write`
/// returns. What the follower printed on stdout.
fn follow_while(dir: &TempDir, options: ReadOptions, write: impl FnOnce()) -> String {
    let done = Arc::new(AtomicBool::new(false));
    let out = Shared::default();
    let reader = {
        let (dir, done, mut out) = (dir.0.clone(), done.clone(), out.clone());
        std::thread::spawn(move || {
            let options = ReadOptions {
                follow: true,
                ..options
            };
            let is_done = || done.load(Ordering::SeqCst);
            read_logs(&dir, "c1", options, &mut out, &mut io::sink(), &is_done)
        })
    };
    write();
    done.store(true, Ordering::SeqCst);
    reader.join().unwrap().unwrap();
    out.text()
}

fn numbered(range: std::ops::Range<usize>) -> String {
    range.map(|n| format!("line {n:04}\n")).collect()
}

/// Writes the numbered lines, pausing 20 ms after every `per_pause`-th.
fn write_slowly(writer: &mut LogWriter, lines: std::ops::Range<usize>, per_pause: usize) {
    for n in lines {
        writer
            .write(Stream::Stdout, format!("line {n:04}\n").as_bytes())
            .unwrap();
        if n % per_pause == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn follow_prints_what_another_thread_appends() {
    let dir = TempDir::new("follow-append");
    let options = LogOptions {
        max_size: None,
        max_file: 1,
    };
    let mut writer = LogWriter::create(&dir.0, "c1", options).unwrap();
    write_slowly(&mut writer, 0..3, 100);
    let got = follow_while(&dir, ReadOptions::default(), || {
        std::thread::sleep(Duration::from_millis(150));
        write_slowly(&mut writer, 3..40, 4);
        // A line ended by the stream's end, after a pause longer than a poll.
        writer.write(Stream::Stdout, b"last, no newline").unwrap();
        std::thread::sleep(Duration::from_millis(250));
        drop(writer);
    });
    assert_eq!(got, numbered(0..40) + "last, no newline");
}

#[test]
fn follow_across_rotations() {
    for max_file in [1, 2, 4] {
        let dir = TempDir::new(&format!("follow-rotate-{max_file}"));
        // About ten records a file: a rotation every 200 ms or so, at one line per 20 ms.
        let options = LogOptions {
            max_size: Some(10 * 90),
            max_file,
        };
        let mut writer = LogWriter::create(&dir.0, "c1", options).unwrap();
        write_slowly(&mut writer, 0..25, 1000);
        let kept = stdout(&dir, ReadOptions::default());
        assert!(kept.ends_with(&numbered(22..25)), "{kept}");
        let got = follow_while(&dir, ReadOptions::default(), || {
            write_slowly(&mut writer, 25..80, 1);
            drop(writer);
        });
        assert_eq!(got, kept + &numbered(25..80), "max-file {max_file}");
        let files = fs::read_dir(&dir.0).unwrap().count();
        assert_eq!(files, max_file as usize);
    }
}

#[test]
fn follow_waits_for_the_file_and_tail_zero_prints_only_new_records() {
    let dir = TempDir::new("follow-late");
    let options = ReadOptions {
        tail: Some(0),
        ..ReadOptions::default()
    };
    let got = follow_while(&dir, options.clone(), || {
        std::thread::sleep(Duration::from_millis(300));
        let mut writer = LogWriter::create(&dir.0, "c1", LogOptions::default()).unwrap();
        write_slowly(&mut writer, 0..5, 2);
    });
    assert_eq!(got, numbered(0..5));
    let got = follow_while(&dir, options, || {
        let mut writer = LogWriter::create(&dir.0, "c1", LogOptions::default()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        write_slowly(&mut writer, 5..7, 2);
    });
    assert_eq!(got, numbered(5..7));
}

#[test]
fn follow_ends_when_until_has_passed() {
    let dir = rotated_log("follow-until");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let options = ReadOptions {
        follow: true,
        until: Some(SystemTime::now() + Duration::from_millis(200)),
        ..ReadOptions::default()
    };
    read_logs(&dir.0, "c1", options, &mut out, &mut err, &|| false).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "a\nb\nc\nd\ne\n");
}
