//! Verification email through `lettre` to a real SMTP server: Python's `aiosmtpd` on a free port.
//!
//! Needs `python3 -m pip install aiosmtpd`. Without it the test prints SKIPPED, unless
//! `NIMBUS_REQUIRE_SMTP=1` (CI), where it fails.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_auth::{
    AuthConfig, AuthService, PasswordHashConfig, RateLimits, SmtpConfig, SmtpMailer, SmtpSecurity,
};
use nimbus_store_local::SqliteStore;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn aiosmtpd_available() -> bool {
    Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn verification_email_reaches_a_real_smtp_server() {
    if !aiosmtpd_available() {
        if std::env::var("NIMBUS_REQUIRE_SMTP").is_ok_and(|v| v == "1") {
            panic!("aiosmtpd is not importable: run `python3 -m pip install aiosmtpd`");
        }
        eprintln!("SKIPPED: aiosmtpd is not installed (python3 -m pip install aiosmtpd)");
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("smtp.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _server = Server(
        Command::new("python3")
            .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["--class", "aiosmtpd.handlers.Debugging", "stdout"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting aiosmtpd"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mailer = SmtpMailer::new(&SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: None,
        password: None,
        from: "Nimbus <no-reply@nimbus.test>".into(),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("nimbus.db")).unwrap());
    let config = AuthConfig {
        password_hash: PasswordHashConfig::insecure_for_tests(),
        rate_limits: RateLimits::unlimited(),
        public_url: "https://nimbus.test".into(),
        ..AuthConfig::default()
    };
    let auth = AuthService::new(store, Arc::new(mailer), config).unwrap();
    assert!(auth.outbox("default").is_none());
    auth.sign_up("default", "smtp-user@example.com", crate::common::PASSWORD, None).await.unwrap();

    // The email is sent in the background: wait for the server to print it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let mut text = String::new();
        std::fs::File::open(&log_path).unwrap().read_to_string(&mut text).unwrap();
        // The body is quoted-printable: undo soft line breaks and `=3D`.
        let text = text.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
        if text.contains("verify-email?token=") && text.contains("END MESSAGE") {
            break text;
        }
        assert!(Instant::now() < deadline, "no message arrived; server output:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(text.contains("To: smtp-user@example.com"), "{text}");
    assert!(text.contains("Subject: Nimbus: confirm your email address"), "{text}");
    assert!(
        text.contains("https://nimbus.test/v1/projects/default/auth/verify-email?token="),
        "{text}"
    );
    // The token in the message is the real one: it verifies the address.
    let token: String = text
        .split("verify-email?token=")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    assert_eq!(token.len(), 43);
    let user = auth.verify_email("default", &token, None).await.unwrap();
    assert!(user.email_verified);
}
