//! `rabbitmqctl stop_app` / `start_app` under a running service: readiness goes 503, then the
//! connection and the topology come back by themselves. Its own test binary, because stopping the
//! broker would disturb the tests of other binaries (cargo runs test binaries one at a time).

mod common;

use std::{process::Command, time::Duration};

use common::*;

fn rabbitmqctl(arg: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {arg} failed");
}

#[tokio::test]
async fn topology_comes_back_after_the_broker_restarts() {
    let env = TestEnv::new("restart").await;
    let app = env.spawn().await;
    app.wait_ready().await;
    let exchange = env.name("orders_exchange");
    app.management.delete_exchange(&exchange).await.unwrap();

    rabbitmqctl("stop_app");
    let down = eventually(Duration::from_secs(15), || async { app.ready_status().await.0 == 503 }).await;
    let (_, during) = app.ready_status().await;
    rabbitmqctl("start_app");
    assert!(down, "ready stayed 200 while the broker was stopped");
    assert_eq!(during["checks"]["broker"]["status"], "down", "{during}");

    let back = eventually(Duration::from_secs(60), || async { app.ready_status().await.0 == 200 }).await;
    assert!(back, "not ready after start_app: {:?}", app.ready_status().await);
    let generation = app.app.link().borrow().as_ref().map(|l| l.generation);
    assert!(generation >= Some(2), "{generation:?}");
    let has_exchange = eventually(Duration::from_secs(10), || async {
        app.management
            .exchanges()
            .await
            .is_ok_and(|all| all.iter().any(|e| e.name == exchange))
    })
    .await;
    assert!(has_exchange, "the applier did not redeclare the deleted exchange");

    app.stop().await;
}
