//! Unit tests of the capture files and their streams (no container).

use std::io::Write;

use futures::StreamExt;

use super::*;

#[tokio::test]
async fn streams_follow_the_files_until_the_capture_is_finished() {
    let parent = tempfile::tempdir().unwrap();
    let files =
        CaptureFiles::create_blocking(parent.path(), "osb-test", OutputMode::Separate, None)
            .unwrap();
    let CaptureFiles {
        mut stdout,
        mut stderr,
        output,
        mut watch,
    } = files;
    let mut out = output.stdout_stream();
    stdout.write_all(b"one ").unwrap();
    assert_eq!(&out.next().await.unwrap().unwrap()[..], b"one ");
    // A write wakes the watch, which wakes the stream.
    let wrote = async {
        stdout.write_all(b"two").unwrap();
        stderr.write_all(b"err").unwrap();
    };
    let (over, ()) = tokio::join!(watch.next(), wrote);
    assert!(!over);
    assert_eq!(&out.next().await.unwrap().unwrap()[..], b"two");
    watch.finish(false).await;
    // Final: the stream ends, and a new one reads everything from the start.
    assert!(out.next().await.is_none());
    assert_eq!(output.read_stdout().await.unwrap(), b"one two");
    assert_eq!(output.read_stderr().await.unwrap(), b"err");
    let all: Vec<u8> = output
        .stderr_stream()
        .map(|c| c.unwrap().to_vec())
        .concat()
        .await;
    assert_eq!(all, b"err");
    assert!(!output.truncated());
}

#[tokio::test]
async fn past_the_limit_the_watch_says_so_and_readers_stop_at_it() {
    let parent = tempfile::tempdir().unwrap();
    let files =
        CaptureFiles::create_blocking(parent.path(), "osb-test", OutputMode::Combined, Some(8))
            .unwrap();
    let CaptureFiles {
        mut stdout,
        output,
        mut watch,
        ..
    } = files;
    let wrote = async { stdout.write_all(b"0123456789abcdef").unwrap() };
    let (over, ()) = tokio::join!(watch.next(), wrote);
    assert!(over || watch.over_limit());
    watch.finish(true).await;
    assert!(output.truncated());
    assert_eq!(output.read_stdout().await.unwrap(), b"01234567");
    assert_eq!(output.stderr_path(), None);
}

#[test]
fn the_capture_dir_goes_with_the_last_reader() {
    let parent = tempfile::tempdir().unwrap();
    let files =
        CaptureFiles::create_blocking(parent.path(), "osb-test", OutputMode::Separate, None)
            .unwrap();
    let dir = files.output.dir().to_path_buf();
    assert!(dir.is_dir());
    let stream = files.output.stdout_stream();
    drop(files);
    assert!(dir.is_dir(), "a stream still reads it");
    drop(stream);
    assert!(!dir.exists());
}

#[tokio::test]
async fn lines_are_split_lossy_and_bounded() {
    let chunks: Vec<io::Result<Bytes>> = vec![
        Ok(Bytes::from_static(b"one\r\ntw")),
        Ok(Bytes::from_static(b"o\n\xffbad\n")),
        Ok(Bytes::from(vec![b'x'; MAX_OUTPUT_LINE + 3])),
        Ok(Bytes::from_static(b"\nlast")),
    ];
    let lines: Vec<String> = lines_of(futures::stream::iter(chunks))
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert_eq!(lines[0], "one");
    assert_eq!(lines[1], "two");
    assert_eq!(lines[2], "\u{fffd}bad");
    assert_eq!(lines[3].len(), MAX_OUTPUT_LINE);
    assert_eq!(lines[4], "xxx");
    assert_eq!(lines[5], "last");
    assert_eq!(lines.len(), 6);
}
