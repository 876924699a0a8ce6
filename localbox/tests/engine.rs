//! Engine tests: real commands under real bubblewrap, as the per-sandbox uid.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{engine, eventually, pids_of_uid, sandbox_uid, sh};
use localbox::{
    Engine, EngineConfig, ErrorCode, ExecEvent, ExecRequest, FileKind, Isolation, SandboxSpec,
    SandboxState, Stream,
};

async fn new_sandbox(engine: &Engine) -> String {
    engine.create(SandboxSpec::default()).await.unwrap().id
}

#[tokio::test]
async fn runs_as_own_uid_inside_bubblewrap() {
    let (engine, _dir) = engine();
    assert!(
        engine.per_sandbox_uid(),
        "tests run as root and must exercise per-sandbox uids"
    );
    let id = new_sandbox(&engine).await;
    let (code, out, _) = sh(
        &engine,
        &id,
        "id -u; id -G; hostname; pwd; echo $HOME; ls /",
    )
    .await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    let uid: u32 = lines[0].parse().unwrap();
    assert!((200_000..210_000).contains(&uid), "uid {uid}");
    assert_eq!(
        lines[1], lines[0],
        "supplementary groups cleared, gid = uid"
    );
    assert_eq!(&lines[2..5], ["sandbox", "/workspace", "/workspace"]);
    assert!(
        !out.contains("root\n") && !out.contains("work\n"),
        "host dirs must not be visible: {out}"
    );
    // The sandbox directory belongs to the sandbox uid and is closed to others.
    let dir = engine.config().root_dir.join(&id);
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (uid, 0o700)
    );
}

#[tokio::test]
async fn exec_separates_streams_and_reports_exit_codes() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let (code, out, err) = sh(&engine, &id, "echo out; echo err >&2; exit 3").await;
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));

    let r = engine
        .exec(&id, ExecRequest::argv(["printf", "%s|", "a b", "-c"]))
        .await
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stdout_tail.as_slice()),
        (0, b"a b|-c|".as_slice())
    );
    assert_eq!(
        engine
            .exec(&id, ExecRequest::argv(["false"]))
            .await
            .unwrap()
            .exit_code,
        1
    );
    let nf = engine
        .exec(&id, ExecRequest::argv(["no-such-command"]))
        .await
        .unwrap();
    assert_eq!(
        nf.exit_code,
        127,
        "{}",
        String::from_utf8_lossy(&nf.stderr_tail)
    );
    assert_eq!(
        engine
            .exec(&id, ExecRequest::argv(["/etc/passwd"]))
            .await
            .unwrap()
            .exit_code,
        126
    );
    assert_eq!(sh(&engine, &id, "no-such-command").await.0, 127);
    assert_eq!(sh(&engine, &id, "kill -9 $$").await.0, 137);
    let err = engine
        .exec(&id, ExecRequest::argv(Vec::<String>::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn exec_env_and_cwd() {
    let (engine, _dir) = engine();
    let spec = SandboxSpec {
        env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "x".into())]),
        ..Default::default()
    };
    let id = engine.create(spec).await.unwrap().id;
    engine.mkdir(&id, "sub/dir", true).await.unwrap();
    let mut req = ExecRequest::shell("echo $A $B $HOME; pwd; env | grep -c '^CARGO' || true");
    req.env.insert("B".into(), "2".into());
    req.cwd = Some("sub/dir".into());
    let out = engine.exec(&id, req).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout_tail),
        "1 2 /workspace\n/workspace/sub/dir\n0\n"
    );

    let mut req = ExecRequest::shell("pwd");
    req.cwd = Some("/tmp".into());
    assert_eq!(engine.exec(&id, req).await.unwrap().stdout_tail, b"/tmp\n");
    let mut req = ExecRequest::shell("pwd");
    req.cwd = Some("missing".into());
    assert_eq!(
        engine.exec(&id, req).await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let mut req = ExecRequest::shell("pwd");
    req.cwd = Some("/etc".into());
    assert_eq!(
        engine.exec(&id, req).await.unwrap_err().code,
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn exec_timeout_kills_the_command() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let uid = sandbox_uid(&engine, &id).await;
    let mut req = ExecRequest::shell("echo before; sleep 30 & sleep 30; echo after");
    req.timeout = Some(Duration::from_millis(500));
    let start = Instant::now();
    let out = engine.exec(&id, req).await.unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, 124);
    assert_eq!(out.stdout_tail, b"before\n");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    // Also the backgrounded sleep is gone with the pid namespace.
    eventually(
        Duration::from_secs(3),
        "sandbox processes to exit",
        || async { pids_of_uid(uid).is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn output_streams_before_the_command_ends() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let start = Instant::now();
    let mut stream = engine
        .exec_stream(
            &id,
            ExecRequest::shell("echo first; sleep 2; echo second >&2"),
        )
        .await
        .unwrap();
    match stream.next().await.unwrap() {
        ExecEvent::Output(Stream::Stdout, b) => assert_eq!(&b[..], b"first\n"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "first chunk only after {:?}",
        start.elapsed()
    );
    match stream.next().await.unwrap() {
        ExecEvent::Output(Stream::Stderr, b) => assert_eq!(&b[..], b"second\n"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_secs(2));
    match stream.next().await.unwrap() {
        ExecEvent::Exit(out) => assert_eq!((out.exit_code, out.timed_out), (0, false)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn dropping_the_stream_kills_the_command() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let uid = sandbox_uid(&engine, &id).await;
    let mut stream = engine
        .exec_stream(&id, ExecRequest::shell("echo go; sleep 60"))
        .await
        .unwrap();
    assert!(matches!(stream.next().await, Some(ExecEvent::Output(..))));
    assert!(!pids_of_uid(uid).is_empty());
    drop(stream);
    eventually(Duration::from_secs(3), "command killed", || async {
        pids_of_uid(uid).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn exec_stdin() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let mut req = ExecRequest::argv(["cat"]);
    req.stdin = Some(b"hello\n".to_vec());
    assert_eq!(engine.exec(&id, req).await.unwrap().stdout_tail, b"hello\n");
    let mut req = ExecRequest::shell("wc -c");
    req.stdin = Some(vec![7u8; 1 << 20]);
    assert_eq!(
        engine.exec(&id, req).await.unwrap().stdout_tail,
        b"1048576\n"
    );
    // Without stdin the command reads EOF instead of hanging.
    assert_eq!(
        engine
            .exec(&id, ExecRequest::argv(["cat"]))
            .await
            .unwrap()
            .exit_code,
        0
    );
}

#[tokio::test]
async fn live_stdin_reaches_the_running_command_and_dropping_it_is_eof() {
    use tokio::io::AsyncWriteExt;
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    // Each line is answered before the next is written: the command really reads as it runs.
    let (mut stream, mut stdin) = engine
        .exec_stream_with_stdin(
            &id,
            ExecRequest::shell("while read -r l; do echo \"got $l\"; done; echo eof"),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for line in ["one", "two"] {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let want = format!("got {line}\n");
        while !out.ends_with(want.as_bytes()) {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(ExecEvent::Output(_, b))) => out.extend_from_slice(&b),
                other => panic!("waiting for {want:?} after {out:?}: {other:?}"),
            }
        }
    }
    drop(stdin);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.finish())
        .await
        .expect("the command ends at EOF");
    assert_eq!(end.exit_code, 0);
    assert!(end.stdout_tail.ends_with(b"got two\neof\n"), "{end:?}");
    // Bytes up front and a live pipe are one or the other.
    let mut req = ExecRequest::argv(["cat"]);
    req.stdin = Some(b"x".to_vec());
    let err = engine.exec_stream_with_stdin(&id, req).await.err().unwrap();
    assert_eq!(err.code, localbox::ErrorCode::InvalidArgument, "{err:?}");

    // The same for a background process: it reads the line while running, ends at EOF.
    let (p, mut stdin) = engine
        .start_process_with_stdin(&id, ExecRequest::shell("read -r l; echo \"bg $l\"; cat"))
        .await
        .unwrap();
    stdin.write_all(b"three\n").await.unwrap();
    let (mut o, deadline) = (0, Instant::now() + Duration::from_secs(10));
    let mut seen = Vec::new();
    while !seen.ends_with(b"bg three\n") {
        assert!(
            Instant::now() < deadline,
            "no answer from the process: {seen:?}"
        );
        let out = engine
            .wait_process_output(&id, &p.pid, o, 0, Duration::from_secs(1))
            .await
            .unwrap();
        seen.extend_from_slice(&out.stdout);
        o = out.stdout_next;
        assert!(out.running, "it must still run, waiting on `cat`: {out:?}");
    }
    drop(stdin);
    let out = loop {
        let out = engine
            .wait_process_output(&id, &p.pid, o, 0, Duration::from_secs(1))
            .await
            .unwrap();
        if !out.running {
            break out;
        }
        assert!(Instant::now() < deadline, "EOF did not end the process");
    };
    assert_eq!(out.exit_code, Some(0), "{out:?}");
}

#[tokio::test]
async fn waiting_for_background_output_returns_on_output_and_on_exit() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    // Silent for a moment, then one line, then silent again until it exits with 3.
    let p = engine
        .start_process(
            &id,
            ExecRequest::shell("sleep 0.3; echo one; sleep 0.3; exit 3"),
        )
        .await
        .unwrap();
    let long = Duration::from_secs(20);
    // Nothing yet: a short wait comes back empty with the process still running.
    let none = engine
        .wait_process_output(&id, &p.pid, 0, 0, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(none.stdout.is_empty() && none.running, "{none:?}");
    // A long wait ends when the line arrives (not at its limit: the process is still running).
    let one = engine
        .wait_process_output(&id, &p.pid, 0, 0, long)
        .await
        .unwrap();
    assert_eq!((one.stdout.as_slice(), one.running), (&b"one\n"[..], true));
    // And the next one when the process exits.
    let end = engine
        .wait_process_output(&id, &p.pid, one.stdout_next, 0, long)
        .await
        .unwrap();
    assert_eq!(
        (end.stdout.len(), end.running, end.exit_code),
        (0, false, Some(3))
    );
}

#[tokio::test]
async fn background_process_output_offsets_and_signal() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let script = "trap 'echo got-term; exit 7' TERM; echo started; echo warn >&2; while :; do sleep 0.1; done";
    let p = engine
        .start_process(&id, ExecRequest::shell(script))
        .await
        .unwrap();
    assert!(p.running);
    assert_eq!(engine.list_processes(&id).unwrap(), vec![p.clone()]);
    let first = eventually(Duration::from_secs(5), "started", || async {
        let o = engine.process_output(&id, &p.pid, 0, 0).unwrap();
        (o.stdout == b"started\n" && o.stderr == b"warn\n").then_some(o)
    })
    .await;
    assert_eq!(
        (first.stdout_next, first.stderr_next, first.running),
        (8, 5, true)
    );
    let again = engine
        .process_output(&id, &p.pid, first.stdout_next, first.stderr_next)
        .unwrap();
    assert!(again.stdout.is_empty() && again.stderr.is_empty());
    assert_eq!(
        engine.process_output(&id, &p.pid, 3, 5).unwrap().stdout,
        b"rted\n"
    );

    // SIGTERM reaches the command itself (its trap runs), not bubblewrap.
    engine.signal_process(&id, &p.pid, 15).unwrap();
    let done = eventually(Duration::from_secs(5), "exit after SIGTERM", || async {
        let o = engine
            .process_output(&id, &p.pid, first.stdout_next, 0)
            .unwrap();
        (!o.running).then_some(o)
    })
    .await;
    assert_eq!(done.stdout, b"got-term\n");
    assert_eq!(done.exit_code, Some(7));
    assert_eq!(engine.process(&id, &p.pid).unwrap().exit_code, Some(7));
    assert_eq!(
        engine.process(&id, "999").unwrap_err().code,
        ErrorCode::NotFound
    );

    // SIGKILL of a long runner.
    let p2 = engine
        .start_process(&id, ExecRequest::argv(["sleep", "60"]))
        .await
        .unwrap();
    engine.signal_process(&id, &p2.pid, 9).unwrap();
    let info = eventually(Duration::from_secs(5), "sleep killed", || async {
        let i = engine.process(&id, &p2.pid).unwrap();
        (!i.running).then_some(i)
    })
    .await;
    assert_eq!(info.exit_code, Some(137));
}

#[tokio::test]
async fn file_round_trip() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    engine
        .write_file(&id, "/workspace/a.txt", b"hello".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(engine.read_file(&id, "a.txt").await.unwrap(), b"hello");
    assert_eq!(sh(&engine, &id, "cat a.txt").await.1, "hello");

    let binary: Vec<u8> = (0..=255u8).cycle().take(10 << 20).collect();
    engine
        .write_file(&id, "/tmp/big.bin", binary.clone(), Some(0o600))
        .await
        .unwrap();
    assert_eq!(engine.read_file(&id, "/tmp/big.bin").await.unwrap(), binary);
    assert_eq!(
        sh(&engine, &id, "wc -c < /tmp/big.bin").await.1.trim(),
        "10485760"
    );
    let st = engine.stat(&id, "/tmp/big.bin").await.unwrap();
    assert_eq!(
        (st.kind, st.size, st.mode, st.name.as_str()),
        (FileKind::File, 10 << 20, 0o600, "big.bin")
    );
    assert!(st.modified_ms > 1_600_000_000_000);

    // Written files belong to the sandbox uid, so commands can modify them.
    let (code, out, _) = sh(
        &engine,
        &id,
        "[ \"$(stat -c %u a.txt)\" = \"$(id -u)\" ] && echo mine; echo more >> a.txt",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "mine\n"));
    engine
        .write_file(&id, "a.txt", b"x".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        engine.read_file(&id, "a.txt").await.unwrap(),
        b"x",
        "write truncates"
    );

    engine.mkdir(&id, "d1/d2", true).await.unwrap();
    engine.mkdir(&id, "d1/d2", true).await.unwrap();
    assert_eq!(
        engine.mkdir(&id, "d1", false).await.unwrap_err().code,
        ErrorCode::Conflict
    );
    assert_eq!(
        engine.mkdir(&id, "x/y", false).await.unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        engine
            .write_file(&id, "nodir/f", vec![], None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    engine
        .write_file(&id, "d1/d2/f", b"1".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        sh(&engine, &id, "touch d1/d2/g && echo ok").await.1,
        "ok\n",
        "created dirs are the sandbox's"
    );

    let names: Vec<(String, FileKind)> = engine
        .list_dir(&id, "/workspace")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        names,
        vec![
            ("a.txt".into(), FileKind::File),
            ("d1".into(), FileKind::Directory)
        ]
    );
    assert_eq!(
        engine.list_dir(&id, "d1/d2").await.unwrap()[0].path,
        "/workspace/d1/d2/f"
    );
    assert_eq!(
        engine.read_file(&id, "d1").await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        engine.read_file(&id, "missing").await.unwrap_err().code,
        ErrorCode::NotFound
    );

    assert_eq!(
        engine.remove(&id, "d1", false).await.unwrap_err().code,
        ErrorCode::Conflict
    );
    engine.remove(&id, "d1", true).await.unwrap();
    engine.remove(&id, "a.txt", false).await.unwrap();
    assert!(engine.list_dir(&id, ".").await.unwrap().is_empty());
    assert_eq!(
        engine
            .remove(&id, "/workspace", true)
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn path_escapes_are_refused() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let (code, _, err) =
        sh(&engine, &id, "echo in > inside.txt && ln -s /etc etc_link && ln -s /etc/passwd pw && ln -s ../../.. up && ln -s inside.txt alias && mkfifo fifo").await;
    assert_eq!(code, 0, "{err}");
    for p in [
        "/etc/passwd",
        "/",
        "/proc/self/environ",
        "../x",
        "/workspace/../../etc/passwd",
        "/tmp/../etc/passwd",
    ] {
        let e = engine.read_file(&id, p).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "read {p}: {e}");
    }
    for p in [
        "etc_link/passwd",
        "pw",
        "up/etc/passwd",
        "/workspace/etc_link/hostname",
    ] {
        let e = engine.read_file(&id, p).await.unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::Forbidden,
            "read through symlink {p}: {e}"
        );
    }
    for p in ["/etc/evil", "etc_link/evil", "pw", "up/tmp/evil", "../evil"] {
        let e = engine
            .write_file(&id, p, b"x".to_vec(), None)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "write {p}: {e}");
    }
    assert_eq!(
        engine.list_dir(&id, "etc_link").await.unwrap_err().code,
        ErrorCode::Forbidden
    );
    assert_eq!(
        engine
            .mkdir(&id, "etc_link/x", true)
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    assert_eq!(
        engine
            .remove(&id, "etc_link/passwd", false)
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    // Reported, not followed; removing the link removes only the link.
    assert_eq!(
        engine.stat(&id, "etc_link").await.unwrap().kind,
        FileKind::Symlink
    );
    engine.remove(&id, "etc_link", true).await.unwrap();
    assert!(std::path::Path::new("/etc/passwd").exists());
    // A FIFO must not hang the engine; links within the sandbox still work.
    assert_eq!(
        engine.read_file(&id, "fifo").await.unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(engine.read_file(&id, "alias").await.unwrap(), b"in\n");
    let mut req = ExecRequest::shell("pwd");
    req.cwd = Some("up".into());
    assert_eq!(
        engine.exec(&id, req).await.unwrap_err().code,
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn sandboxes_cannot_see_each_other() {
    let (engine, _dir) = engine();
    let a = new_sandbox(&engine).await;
    let b = new_sandbox(&engine).await;
    engine
        .write_file(&a, "secret.txt", b"s3cret".to_vec(), None)
        .await
        .unwrap();
    let uid_a = sandbox_uid(&engine, &a).await;
    let bg = engine
        .start_process(&a, ExecRequest::argv(["sleep", "30"]))
        .await
        .unwrap();

    let a_host = engine
        .config()
        .root_dir
        .join(&a)
        .join("workspace/secret.txt");
    let a_dir = engine.config().root_dir.join(&a);
    let script = format!(
        "ls /proc | grep -c '^[0-9]'; cat {} 2>&1; ls {} 2>&1; ps -e -o comm= | grep -c sleep",
        a_host.display(),
        a_dir.display()
    );
    let (_, out, _) = sh(&engine, &b, &script).await;
    let lines: Vec<&str> = out.lines().collect();
    let own_pids: usize = lines[0].parse().unwrap();
    assert!(own_pids <= 6, "/proc shows {own_pids} pids: {out}");
    assert!(lines[1].contains("No such file"), "{out}");
    assert!(lines[2].contains("No such file"), "{out}");
    assert_eq!(lines[3], "0", "A's sleep must be invisible to B: {out}");
    assert!(!out.contains("s3cret"));
    assert_ne!(sandbox_uid(&engine, &b).await, uid_a);
    engine.signal_process(&a, &bg.pid, 9).unwrap();
}

#[tokio::test]
async fn fork_bomb_is_stopped_by_the_process_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.limits.nproc = Some(64);
    let engine = Engine::new(config).unwrap();
    let bomb_box = new_sandbox(&engine).await;
    let other = new_sandbox(&engine).await;
    let uid = sandbox_uid(&engine, &bomb_box).await;

    // bash retries failed forks, so the bomb keeps pressing against the limit until `timeout`
    // kills its process group.
    let mut req =
        ExecRequest::shell("timeout -s KILL 4 bash -c ':(){ :|:& };:; sleep 10'; echo survived");
    req.timeout = Some(Duration::from_secs(20));
    let start = Instant::now();
    let bomb = tokio::spawn({
        let engine = engine.clone();
        let id = bomb_box.clone();
        async move { engine.exec(&id, req).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut peak = 0;
    for _ in 0..10 {
        peak = peak.max(pids_of_uid(uid).len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak > 10, "the bomb should be running ({peak} processes)");
    assert!(peak <= 64, "{peak} processes exceed RLIMIT_NPROC");
    // The engine and other sandboxes keep working meanwhile.
    let t = Instant::now();
    assert_eq!(sh(&engine, &other, "echo ok").await.1, "ok\n");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "other sandbox took {:?}",
        t.elapsed()
    );
    assert_eq!(engine.get(&bomb_box).unwrap().state, SandboxState::Running);
    engine
        .write_file(&other, "f", b"1".to_vec(), None)
        .await
        .unwrap();

    let out = tokio::time::timeout(Duration::from_secs(25), bomb)
        .await
        .expect("bomb exec returns")
        .unwrap();
    assert!(!out.timed_out, "`timeout` inside ended the bomb");
    assert!(String::from_utf8_lossy(&out.stdout_tail).contains("survived"));
    assert!(start.elapsed() < Duration::from_secs(15));
    eventually(Duration::from_secs(5), "bomb processes gone", || async {
        pids_of_uid(uid).is_empty().then_some(())
    })
    .await;

    // Destroying a sandbox in the middle of a bomb still works (kill(-1) as the sandbox uid).
    engine
        .start_process(
            &bomb_box,
            ExecRequest::shell("bash -c ':(){ :|:& };:; sleep 60'"),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "bomb running again", || async {
        (pids_of_uid(uid).len() > 10).then_some(())
    })
    .await;
    let t = Instant::now();
    engine.destroy(&bomb_box).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "destroy took {:?}",
        t.elapsed()
    );
    assert!(pids_of_uid(uid).is_empty());
}

#[tokio::test]
async fn network_none_has_only_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.network = localbox::Network::None;
    let engine = Engine::new(config).unwrap();
    let id = new_sandbox(&engine).await;
    let (_, out, _) = sh(
        &engine,
        &id,
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    )
    .await;
    assert_eq!(out, "lo\n");
    let (engine2, _dir2) = common::engine();
    let shared = new_sandbox(&engine2).await;
    let (_, out, _) = sh(&engine2, &shared, "tail -n +3 /proc/net/dev | wc -l").await;
    assert_eq!(
        out.trim(),
        std::fs::read_to_string("/proc/net/dev")
            .unwrap()
            .lines()
            .skip(2)
            .count()
            .to_string()
    );
}

#[tokio::test]
async fn pause_and_resume() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let p = engine
        .start_process(
            &id,
            ExecRequest::shell("i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done"),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "output", || async {
        (!engine
            .process_output(&id, &p.pid, 0, 0)
            .unwrap()
            .stdout
            .is_empty())
        .then_some(())
    })
    .await;
    assert_eq!(engine.pause(&id).await.unwrap().state, SandboxState::Paused);
    assert_eq!(
        engine
            .exec(&id, ExecRequest::argv(["true"]))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Conflict
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let frozen = engine
        .process_output(&id, &p.pid, 0, 0)
        .unwrap()
        .stdout_next;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = engine.process_output(&id, &p.pid, 0, 0).unwrap();
    assert_eq!(still.stdout_next, frozen, "no output while paused");
    assert!(still.running);

    assert_eq!(
        engine.resume(&id).await.unwrap().state,
        SandboxState::Running
    );
    eventually(Duration::from_secs(5), "output after resume", || async {
        (engine
            .process_output(&id, &p.pid, 0, 0)
            .unwrap()
            .stdout_next
            > frozen)
            .then_some(())
    })
    .await;
    assert_eq!(sh(&engine, &id, "echo back").await.1, "back\n");
    engine.signal_process(&id, &p.pid, 9).unwrap();
}

#[tokio::test]
async fn destroy_kills_processes_and_removes_the_directory() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let uid = sandbox_uid(&engine, &id).await;
    let p = engine
        .start_process(&id, ExecRequest::shell("sleep 60 & sleep 60"))
        .await
        .unwrap();
    engine.pause(&id).await.unwrap(); // stopped processes must die too
    assert!(!pids_of_uid(uid).is_empty());
    let dir = engine.config().root_dir.join(&id);
    assert!(dir.is_dir());
    engine.destroy(&id).await.unwrap();
    assert!(!dir.exists());
    assert!(pids_of_uid(uid).is_empty());
    assert_eq!(engine.get(&id).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(
        engine.process(&id, &p.pid).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        engine.destroy(&id).await.unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn restarted_engine_rereads_its_sandboxes() {
    let dir = tempfile::tempdir().unwrap();
    let (id, uid) = {
        let engine = Engine::new(common::config(dir.path())).unwrap();
        let spec = SandboxSpec {
            name: Some("keep".into()),
            labels: BTreeMap::from([("team".into(), "x".into())]),
            workdir: Some("/workspace/proj".into()),
            ..Default::default()
        };
        let info = engine.create(spec).await.unwrap();
        engine
            .write_file(&info.id, "note.txt", b"persisted".to_vec(), None)
            .await
            .unwrap();
        engine.pause(&info.id).await.unwrap();
        (info.id.clone(), sandbox_uid_via_record(&engine, &info.id))
    };
    let engine = Engine::new(common::config(dir.path())).unwrap();
    let info = engine.get(&id).unwrap();
    assert_eq!(
        (info.name.as_deref(), info.state, info.workdir.as_str()),
        (Some("keep"), SandboxState::Paused, "/workspace/proj")
    );
    assert_eq!(
        engine
            .list(&BTreeMap::from([("team".into(), "x".into())]))
            .len(),
        1
    );
    engine.resume(&id).await.unwrap();
    assert_eq!(
        engine.read_file(&id, "note.txt").await.unwrap(),
        b"persisted"
    );
    assert_eq!(
        sh(&engine, &id, "cat note.txt; pwd; id -u").await.1,
        format!("persisted/workspace/proj\n{uid}\n")
    );
    assert_eq!(
        engine
            .create(SandboxSpec {
                name: Some("keep".into()),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code,
        ErrorCode::Conflict
    );
    engine.destroy(&id).await.unwrap();
}

fn sandbox_uid_via_record(engine: &Engine, id: &str) -> u32 {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(engine.config().root_dir.join(id).join("sandbox.json")).unwrap(),
    )
    .unwrap();
    rec["uid"].as_u64().unwrap() as u32
}

#[tokio::test]
async fn names_labels_and_expiry() {
    let (engine, _dir) = engine();
    let a = engine
        .create(SandboxSpec {
            name: Some("a".into()),
            labels: BTreeMap::from([("k".into(), "1".into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = engine
        .create(SandboxSpec {
            labels: BTreeMap::from([("k".into(), "2".into())]),
            timeout_secs: Some(3600),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(b.expires_at_ms.unwrap() > b.created_at_ms);
    let dup = engine
        .create(SandboxSpec {
            name: Some("a".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code, ErrorCode::Conflict);
    let only = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    assert_eq!(
        engine
            .list(&only("k", "1"))
            .iter()
            .map(|s| &s.id)
            .collect::<Vec<_>>(),
        vec![&a.id]
    );
    assert_eq!(engine.list(&BTreeMap::new()).len(), 2);
    assert!(engine.list(&only("k", "3")).is_empty());
    assert_eq!(engine.find_by_name("a").unwrap().id, a.id);

    engine
        .set_timeout(&a.id, Some(Duration::from_millis(300)))
        .unwrap();
    eventually(Duration::from_secs(5), "expired sandbox reaped", || async {
        (engine.get(&a.id).map_err(|e| e.code) == Err(ErrorCode::NotFound)).then_some(())
    })
    .await;
    assert!(!engine.config().root_dir.join(&a.id).exists());
    assert_eq!(engine.set_timeout(&b.id, None).unwrap().expires_at_ms, None);
}

#[tokio::test]
async fn missing_bubblewrap_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.bwrap_path = Some("/nonexistent/bwrap".into());
    let engine = Engine::new(config).unwrap();
    let err = engine.create(SandboxSpec::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(
        err.message.contains("apt-get install bubblewrap"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn isolation_none_runs_on_the_host_in_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: EngineConfig = common::config(dir.path());
    config.isolation = Isolation::None;
    let engine = Engine::new(config).unwrap();
    assert!(!engine.per_sandbox_uid());
    let id = new_sandbox(&engine).await;
    engine
        .write_file(&id, "f.txt", b"data".to_vec(), None)
        .await
        .unwrap();
    let ws = engine.config().root_dir.join(&id).join("workspace");
    let (code, out, _) = sh(&engine, &id, "pwd; cat f.txt; echo; echo $HOME").await;
    assert_eq!(code, 0);
    assert_eq!(out, format!("{0}\ndata\n{0}\n", ws.display()));
    let mut req = ExecRequest::shell("sleep 30");
    req.timeout = Some(Duration::from_millis(300));
    assert!(engine.exec(&id, req).await.unwrap().timed_out);
    assert_eq!(
        engine
            .exec(&id, ExecRequest::argv(["no-such-command"]))
            .await
            .unwrap()
            .exit_code,
        127
    );
    engine.destroy(&id).await.unwrap();
    assert!(!ws.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_process_outlives_the_thread_that_started_it() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    // Started from a short-lived thread: parent-death signals are per thread, so this catches
    // processes tied to the caller's thread instead of the engine's process.
    let (e, i, handle) = (
        engine.clone(),
        id.clone(),
        tokio::runtime::Handle::current(),
    );
    let p = std::thread::spawn(move || {
        handle.block_on(e.start_process(&i, ExecRequest::argv(["sleep", "30"])))
    })
    .join()
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        engine.process(&id, &p.pid).unwrap().running,
        "background process died with its starter thread"
    );
    engine.destroy(&id).await.unwrap();
}

#[tokio::test]
async fn rename_moves_within_and_across_mounts_and_stays_confined() {
    let (engine, _dir) = engine();
    let id = new_sandbox(&engine).await;
    let (code, _, err) = sh(
        &engine,
        &id,
        "echo a > a.txt && mkdir -p d/full && echo x > d/full/x && ln -s /etc/passwd pw && ln -s /etc etc_link",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    engine.rename(&id, "a.txt", "b.txt").await.unwrap();
    assert_eq!(engine.read_file(&id, "b.txt").await.unwrap(), b"a\n");
    assert_eq!(
        engine.stat(&id, "a.txt").await.unwrap_err().code,
        ErrorCode::NotFound
    );
    // Across the workspace and /tmp mounts.
    engine.rename(&id, "b.txt", "/tmp/c.txt").await.unwrap();
    assert_eq!(engine.read_file(&id, "/tmp/c.txt").await.unwrap(), b"a\n");
    // A symlink is moved, not followed: it still points at /etc/passwd, unread.
    engine.rename(&id, "pw", "pw2").await.unwrap();
    assert_eq!(
        engine.stat(&id, "pw2").await.unwrap().kind,
        localbox::FileKind::Symlink
    );
    let (code, out, _) = sh(&engine, &id, "readlink pw2").await;
    assert_eq!((code, out.trim()), (0, "/etc/passwd"));
    // Errors: a missing source, a non-empty target directory, paths that leave the sandbox.
    let missing = engine.rename(&id, "nope", "x").await.unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound, "{missing}");
    sh(&engine, &id, "mkdir e && echo y > e/y").await;
    let full = engine.rename(&id, "e", "d/full").await.unwrap_err();
    assert_eq!(full.code, ErrorCode::Conflict, "{full}");
    for (from, to) in [
        ("/tmp/c.txt", "/etc/evil"),
        ("/tmp/c.txt", "etc_link/evil"),
        ("/tmp/c.txt", "../evil"),
        ("etc_link/passwd", "stolen"),
        ("/workspace", "/tmp/ws"),
    ] {
        let e = engine.rename(&id, from, to).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "rename {from} -> {to}: {e}");
    }
    assert_eq!(engine.read_file(&id, "/tmp/c.txt").await.unwrap(), b"a\n");
}
