//! The real binary as an operator runs it: `messages-broker serve --roles R --config FILE`, one
//! process per call, its logs kept in the test's directory and printed when a check fails.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{TestEnv, eventually, free_port};

pub struct Process {
    child: Child,
    pub roles: String,
    pub base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Process {
    /// Starts a process with `roles` on a free port, every other setting from the test's env
    /// (written as a `--config` layer, as an operator's file would be).
    pub fn start(env: &TestEnv, roles: &str) -> Self {
        let port = free_port();
        let config = env.dir.path().join(format!("{}-{port}.toml", roles.replace(',', "-")));
        let text = toml::to_string(&env.settings).expect("settings serialize to TOML");
        std::fs::write(&config, text).expect("write the config layer");
        let log = config.with_extension("log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_messages-broker"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["serve", "--roles", roles, "--config"])
            .arg(&config)
            .env("APP_PORT", port.to_string())
            .env("RUST_LOG", "info,lapin=warn,sqlx=warn")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("the binary starts");
        Self {
            child,
            roles: roles.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::new(),
        }
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|err| panic!("[{}] GET {path}: {err}\n{}", self.roles, self.logs()))
    }

    pub async fn post(&self, path: &str, token: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|err| panic!("[{}] POST {path}: {err}\n{}", self.roles, self.logs()))
    }

    /// Waits for `/api/ready` to answer 200; fails with the process's logs otherwise.
    pub async fn wait_ready(&mut self) {
        let url = format!("{}/api/ready", self.base);
        let ready = eventually(Duration::from_secs(30), || async {
            self.http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        let exited = self.child.try_wait().ok().flatten();
        assert!(
            ready,
            "[{}] never ready (exit: {exited:?}); last answer: {:?}\n{}",
            self.roles,
            match self.http.get(&url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(err) => err.to_string(),
            },
            self.logs()
        );
    }

    /// Asks the process to stop (SIGTERM) and returns its exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Process {
    /// A failed assertion must not leave the process running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
