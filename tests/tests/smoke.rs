use sandbox_tests::host_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_load_and_describe() {
    let t = host_with(&["example", "hostile"], "").await;
    let names: Vec<String> = t.host.plugins().iter().map(|p| p.name().to_string()).collect();
    assert_eq!(names, ["example", "hostile"]);
}
