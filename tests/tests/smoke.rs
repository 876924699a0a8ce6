//! The host works on a current-thread runtime too (compilation runs on the blocking pool).

use sandbox_host::types::{ExecRequest, Spec};
use sandbox_tests::host_with;

#[tokio::test]
async fn plugins_load_and_answer_on_a_current_thread_runtime() {
    let t = host_with(&["example", "hostile"], "").await;
    let names: Vec<String> = t
        .host
        .plugins()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(names, ["example", "hostile"]);
    let sandbox = t
        .host
        .provider("hostile")
        .unwrap()
        .create(Spec::default())
        .await
        .unwrap();
    assert_eq!(
        sandbox
            .exec(ExecRequest::argv(["ok"]), None)
            .await
            .unwrap()
            .stdout_tail,
        b"ok"
    );
}
