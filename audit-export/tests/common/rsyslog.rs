//! A real rsyslogd (Debian package `rsyslog`, and `rsyslog-gnutls` for TLS) with its own
//! configuration in a temporary directory, listening with imtcp on a loopback port and
//! writing each message's raw text (`%rawmsg%`) to a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Certificate files for the TLS listener.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate and key signed by the same CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Whether rsyslogd demands a client certificate signed by the CA (`x509/certvalid`).
    pub require_client_cert: bool,
}

pub struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
    tls: bool,
}

fn binary() -> PathBuf {
    let p = std::env::var_os("RSYSLOGD")
        .map_or_else(|| PathBuf::from("/usr/sbin/rsyslogd"), PathBuf::from);
    assert!(
        p.exists(),
        "rsyslogd not found at {}: install the Debian package `rsyslog` (scripts/setup-test-env does when run as root), or set RSYSLOGD",
        p.display()
    );
    p
}

fn gtls_present() -> bool {
    let multiarch = std::fs::read_dir("/usr/lib")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("rsyslog"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    multiarch
        .iter()
        .chain(std::iter::once(&PathBuf::from("/usr/lib/rsyslog")))
        .any(|d| d.join("lmnsd_gtls.so").exists())
}

/// Writes a CA, and a certificate for `localhost` signed by it, into `dir`.
pub fn make_tls(dir: &Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "m87 test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["m87-exporter".to_owned()]).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "m87-exporter");
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        require_client_cert: false,
    };
    std::fs::write(&files.ca, ca_cert.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.client_cert, client_cert.pem()).unwrap();
    std::fs::write(&files.client_key, client_key.serialize_pem()).unwrap();
    files
}

impl Rsyslog {
    /// Starts rsyslogd on `port` with its files in `dir`, and waits until it listens.
    pub fn start(dir: &Path, port: u16, tls: Option<&TlsFiles>) -> Self {
        let bin = binary();
        if tls.is_some() {
            assert!(
                gtls_present(),
                "rsyslog's TLS driver (lmnsd_gtls.so) is missing: install the Debian package `rsyslog-gnutls`"
            );
        }
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut conf = format!(
            "global(workDirectory=\"{}\" maxMessageSize=\"64k\")\n",
            work.display()
        );
        let module = match tls {
            None => "module(load=\"imtcp\")\n".to_owned(),
            Some(t) => {
                conf.push_str(&format!(
                    "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\n",
                    t.ca.display(), t.cert.display(), t.key.display()
                ));
                let auth = if t.require_client_cert {
                    "x509/certvalid"
                } else {
                    "anon"
                };
                format!(
                    "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"{auth}\")\n"
                )
            }
        };
        conf.push_str(&module);
        conf.push_str(&format!(
            "input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{}\" template=\"raw\")\n",
            dir.join("out.log").display()
        ));
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let mut me = Self {
            child: None,
            dir: dir.to_path_buf(),
            port,
            tls: tls.is_some(),
        };
        me.spawn(&bin);
        me
    }

    fn spawn(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.log"))
            .unwrap();
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("rsyslogd exited ({status}) at start: {}", self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd did not listen on {} within 10 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// rsyslogd's own messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
    }

    /// Stops rsyslogd (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again with the same configuration and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(&binary());
    }

    /// The messages written so far, one per line.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("out.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message parsed as RFC 5424.
#[derive(Debug)]
pub struct Syslog5424 {
    pub pri: u16,
    pub timestamp: String,
    pub hostname: String,
    pub app: String,
    pub procid: String,
    pub msgid: String,
    /// SD-ID and its params (unescaped).
    pub sd: Vec<(String, Vec<(String, String)>)>,
    pub msg: String,
}

/// Parses `<PRI>1 TS HOST APP PROCID MSGID SD [MSG]`, failing on anything out of the grammar.
pub fn parse_5424(line: &str) -> Result<Syslog5424, String> {
    let rest = line.strip_prefix('<').ok_or("no <PRI>")?;
    let (pri, rest) = rest.split_once('>').ok_or("no >")?;
    let pri: u16 = pri.parse().map_err(|_| "PRI is not a number")?;
    if pri > 191 {
        return Err("PRI above 191".into());
    }
    let rest = rest.strip_prefix("1 ").ok_or("VERSION is not 1")?;
    let mut parts = rest.splitn(6, ' ');
    let mut next = |what: &str| parts.next().map(str::to_owned).ok_or(format!("no {what}"));
    let timestamp = next("TIMESTAMP")?;
    chrono::DateTime::parse_from_rfc3339(&timestamp)
        .map_err(|e| format!("TIMESTAMP {timestamp}: {e}"))?;
    let hostname = next("HOSTNAME")?;
    let app = next("APP-NAME")?;
    let procid = next("PROCID")?;
    let msgid = next("MSGID")?;
    let rest = next("STRUCTURED-DATA")?;
    for (f, max) in [(&hostname, 255), (&app, 48), (&procid, 128), (&msgid, 32)] {
        if f.is_empty() || f.len() > max || !f.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(format!(
                "header field {f:?} is not PRINTUSASCII of at most {max}"
            ));
        }
    }
    let (sd, msg) = parse_sd(&rest)?;
    Ok(Syslog5424 {
        pri,
        timestamp,
        hostname,
        app,
        procid,
        msgid,
        sd,
        msg,
    })
}

/// SD-ELEMENTs (id and params) and the MSG after them.
type SdAndMsg = (Vec<(String, Vec<(String, String)>)>, String);

fn parse_sd(s: &str) -> Result<SdAndMsg, String> {
    if let Some(rest) = s.strip_prefix('-') {
        return Ok((
            Vec::new(),
            rest.strip_prefix(' ').unwrap_or(rest).to_owned(),
        ));
    }
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut elements = Vec::new();
    while i < chars.len() && chars[i] == '[' {
        i += 1;
        let start = i;
        while i < chars.len() && chars[i] != ' ' && chars[i] != ']' {
            i += 1;
        }
        let id: String = chars[start..i].iter().collect();
        let mut params = Vec::new();
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
            let ks = i;
            while i < chars.len() && chars[i] != '=' {
                i += 1;
            }
            let key: String = chars[ks..i].iter().collect();
            if chars.get(i + 1) != Some(&'"') {
                return Err(format!("SD-PARAM {key} has no quoted value"));
            }
            i += 2;
            let mut value = String::new();
            loop {
                match chars.get(i) {
                    None => return Err("unterminated SD-PARAM value".into()),
                    Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\' | ']')) => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(']') => return Err("unescaped ] in an SD-PARAM value".into()),
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
            params.push((key, value));
        }
        if chars.get(i) != Some(&']') {
            return Err("SD-ELEMENT not closed".into());
        }
        i += 1;
        elements.push((id, params));
    }
    if elements.is_empty() {
        return Err("no STRUCTURED-DATA".into());
    }
    let msg: String = chars[i..].iter().collect();
    Ok((elements, msg.strip_prefix(' ').unwrap_or(&msg).to_owned()))
}
