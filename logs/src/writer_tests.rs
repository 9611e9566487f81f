use super::*;
use crate::record::decode;
use crate::test_dir::TempDir;
use std::time::{Duration, UNIX_EPOCH};

fn fixed_time() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_796_231_045, 123_456_789)
}

fn writer(dir: &TempDir, options: LogOptions) -> LogWriter {
    let mut writer = LogWriter::create(&dir.0, "c1", options).unwrap();
    writer.clock = fixed_time;
    writer
}

fn unbounded() -> LogOptions {
    LogOptions {
        max_size: None,
        max_file: 1,
    }
}

/// The `(stream, log)` of every record of a file.
fn records(path: &Path) -> Vec<(Stream, String)> {
    let bytes = fs::read(path).unwrap();
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| decode(line).expect("a record"))
        .map(|r| (r.stream, r.log))
        .collect()
}

fn logs(path: &Path) -> Vec<String> {
    records(path).into_iter().map(|(_, log)| log).collect()
}

/// The names of the files in the directory, sorted.
fn names(dir: &TempDir) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn writes_docker_lines() {
    let dir = TempDir::new("docker-lines");
    let mut w = writer(&dir, unbounded());
    w.write(Stream::Stdout, b"hello\n").unwrap();
    w.write(Stream::Stderr, b"oops\n").unwrap();
    let text = fs::read_to_string(w.path()).unwrap();
    let want = concat!(
        "{\"log\":\"hello\\n\",\"stream\":\"stdout\",\"time\":\"2026-12-02T17:04:05.123456789Z\"}\n",
        "{\"log\":\"oops\\n\",\"stream\":\"stderr\",\"time\":\"2026-12-02T17:04:05.123456789Z\"}\n",
    );
    assert_eq!(text, want);
    assert_eq!(w.path(), dir.0.join("c1-json.log"));
}

#[test]
fn splits_at_newlines_and_buffers_partial_lines() {
    let dir = TempDir::new("split");
    let mut w = writer(&dir, unbounded());
    w.write(Stream::Stdout, b"a\nb\n\nc").unwrap();
    w.write(Stream::Stderr, b"err ").unwrap();
    assert_eq!(logs(w.path()), ["a\n", "b\n", "\n"]);
    w.write(Stream::Stdout, b"d\ne").unwrap();
    w.write(Stream::Stderr, b"more\n").unwrap();
    let want = [
        (Stream::Stdout, "a\n"),
        (Stream::Stdout, "b\n"),
        (Stream::Stdout, "\n"),
        (Stream::Stdout, "cd\n"),
        (Stream::Stderr, "err more\n"),
    ];
    let want: Vec<(Stream, String)> = want.iter().map(|(s, l)| (*s, l.to_string())).collect();
    assert_eq!(records(w.path()), want);
    w.flush_stream(Stream::Stdout).unwrap();
    assert_eq!(logs(w.path()).last().unwrap(), "e");
    w.flush().unwrap();
    assert_eq!(logs(w.path()).len(), 6);
}

#[test]
fn drop_writes_the_last_partial_lines() {
    let dir = TempDir::new("drop");
    let path = {
        let mut w = writer(&dir, unbounded());
        w.write(Stream::Stdout, b"no newline").unwrap();
        w.write(Stream::Stderr, b"nor here").unwrap();
        w.path().to_path_buf()
    };
    let want = vec![
        (Stream::Stdout, "no newline".to_string()),
        (Stream::Stderr, "nor here".to_string()),
    ];
    assert_eq!(records(&path), want);
}

#[test]
fn long_lines_split_at_16_kib() {
    let dir = TempDir::new("partial");
    let mut w = writer(&dir, unbounded());
    let long = vec![b'x'; PARTIAL_SIZE * 2 + 10];
    // Fed in odd pieces, as a pipe delivers them.
    for chunk in long.chunks(1000) {
        w.write(Stream::Stdout, chunk).unwrap();
    }
    w.write(Stream::Stdout, b"\n").unwrap();
    let exact = vec![b'y'; PARTIAL_SIZE];
    w.write(Stream::Stdout, &exact).unwrap();
    w.write(Stream::Stdout, b"\nz").unwrap();
    let got = logs(w.path());
    let sizes: Vec<usize> = got.iter().map(String::len).collect();
    assert_eq!(sizes, [PARTIAL_SIZE, PARTIAL_SIZE, 11, PARTIAL_SIZE, 1]);
    assert!(!got[0].ends_with('\n') && got[2].ends_with("x\n") && got[4] == "\n");
    let just_fits = [vec![b'w'; PARTIAL_SIZE - 1], b"\n".to_vec()].concat();
    w.write(Stream::Stderr, &just_fits).unwrap();
    assert_eq!(logs(w.path()).last().unwrap().len(), PARTIAL_SIZE);
}

#[test]
fn invalid_utf8_is_replaced() {
    let dir = TempDir::new("utf8");
    let mut w = writer(&dir, unbounded());
    w.write(Stream::Stdout, b"caf\xc3\xa9 \xff\xfe ok\n")
        .unwrap();
    let text = fs::read_to_string(w.path()).unwrap();
    assert!(
        text.starts_with(r#"{"log":"café \ufffd\ufffd ok\n""#),
        "{text}"
    );
    assert_eq!(logs(w.path()), ["café \u{fffd}\u{fffd} ok\n"]);
}

/// `000\n`, `001\n`, ...: each one a record of [`RECORD`] bytes with the fixed clock.
fn line(n: usize) -> Vec<u8> {
    format!("{n:03}\n").into_bytes()
}
const RECORD: u64 = 74;

fn write_lines(w: &mut LogWriter, numbers: std::ops::Range<usize>) {
    for n in numbers {
        w.write(Stream::Stdout, &line(n)).unwrap();
    }
}

#[test]
fn record_size_assumed_by_the_rotation_tests() {
    assert_eq!(
        crate::record::encode(Stream::Stdout, &line(1), fixed_time()).len() as u64,
        RECORD
    );
}

#[test]
fn rotation_with_max_file_1_restarts_the_file() {
    let dir = TempDir::new("rotate1");
    let options = LogOptions {
        max_size: Some(RECORD * 3),
        max_file: 1,
    };
    let mut w = writer(&dir, options);
    write_lines(&mut w, 0..7);
    assert_eq!(names(&dir), ["c1-json.log"]);
    assert_eq!(logs(w.path()), ["006\n"]);
    write_lines(&mut w, 7..9);
    assert_eq!(logs(w.path()), ["006\n", "007\n", "008\n"]);
}

#[test]
fn rotation_with_max_file_2_keeps_one_old_file() {
    let dir = TempDir::new("rotate2");
    let options = LogOptions {
        max_size: Some(RECORD * 2 + 10),
        max_file: 2,
    };
    let mut w = writer(&dir, options);
    write_lines(&mut w, 0..7);
    assert_eq!(names(&dir), ["c1-json.log", "c1-json.log.1"]);
    assert_eq!(logs(&dir.0.join("c1-json.log.1")), ["004\n", "005\n"]);
    assert_eq!(logs(w.path()), ["006\n"]);
}

#[test]
fn rotation_with_max_file_3_shifts_and_drops_the_oldest() {
    let dir = TempDir::new("rotate3");
    let options = LogOptions {
        max_size: Some(RECORD * 2),
        max_file: 3,
    };
    let mut w = writer(&dir, options);
    write_lines(&mut w, 0..4);
    assert_eq!(names(&dir), ["c1-json.log", "c1-json.log.1"]);
    write_lines(&mut w, 4..9);
    let all = ["c1-json.log", "c1-json.log.1", "c1-json.log.2"];
    assert_eq!(names(&dir), all);
    assert_eq!(logs(&dir.0.join("c1-json.log.2")), ["004\n", "005\n"]);
    assert_eq!(logs(&dir.0.join("c1-json.log.1")), ["006\n", "007\n"]);
    assert_eq!(logs(w.path()), ["008\n"]);
    for f in all {
        assert!(fs::metadata(dir.0.join(f)).unwrap().len() <= RECORD * 2);
    }
}

#[test]
fn a_record_bigger_than_max_size_gets_a_file_of_its_own() {
    let dir = TempDir::new("big");
    let options = LogOptions {
        max_size: Some(100),
        max_file: 3,
    };
    let mut w = writer(&dir, options);
    w.write(Stream::Stdout, b"a\n").unwrap();
    w.write(Stream::Stdout, &[b'b'; 300]).unwrap();
    w.write(Stream::Stdout, b"\nc\n").unwrap();
    assert_eq!(logs(&dir.0.join("c1-json.log.2")), ["a\n"]);
    assert_eq!(logs(&dir.0.join("c1-json.log.1")).len(), 1);
    assert_eq!(logs(w.path()), ["c\n"]);
}

#[test]
fn reopening_appends_and_removes_stale_files() {
    let dir = TempDir::new("reopen");
    let options = LogOptions {
        max_size: Some(RECORD),
        max_file: 5,
    };
    write_lines(&mut writer(&dir, options), 0..5);
    assert_eq!(names(&dir).len(), 5);
    fs::write(dir.0.join("c1-json.log.new"), b"junk").unwrap();
    let options = LogOptions {
        max_size: Some(RECORD * 2),
        max_file: 2,
    };
    let mut w = writer(&dir, options);
    assert_eq!(names(&dir), ["c1-json.log", "c1-json.log.1"]);
    write_lines(&mut w, 5..6);
    assert_eq!(logs(w.path()), ["004\n", "005\n"]);
}

#[test]
fn create_needs_the_directory() {
    let dir = TempDir::new("nodir");
    let err = LogWriter::create(&dir.0.join("missing"), "c1", unbounded()).unwrap_err();
    assert!(matches!(err, WriteError::Open { .. }), "{err}");
    assert!(err.to_string().starts_with("cannot open log file "));
}
