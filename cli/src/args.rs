//! The command line: every command and its arguments (clap).

use clap::{Parser, Subcommand};
use m87_events::{DeviceName, Email, KeyId, OrgId, Role};
use m87_transport::tls::Fingerprint;

use crate::output::Output;

/// The heart of the tool, under the list of commands in `m87 --help`.
const DEVICE_HELP: &str = "\
Operate one device: m87 <device> <operation>   (a name, id or unique prefix)
  exec      run a command; its exit code is m87's
  shell     an interactive login shell
  forward   local ports (and unix sockets) to the device
  cp, sync  copy and sync files: m87 cp FILE robot-1:/tmp/
  docker, logs, metrics, serial, status, ls, audit, access
  (`m87 <device> --help` lists them all)

Examples:
  m87 login                                 sign in (or: m87 login --api-key KEY)
  m87 devices list                          your fleet
  m87 robot-1 exec -- uname -a              run a command on robot-1
  m87 robot-1 shell                         a shell on it
  m87 robot-1 forward 8080:80               its port 80 on localhost:8080
  m87 cp ./app.tar robot-1:/srv/            copy a file to it
  m87 sync -e '*.log' ./site robot-1:/srv/site
  m87 robot-1 status -o json                is it healthy (for scripts)
  m87 --profile staging devices list        another server or account (m87 profile)";

/// Secure, outbound-only access to fleets of Linux devices.
///
/// The server comes from M87_API_URL (or the one stored by `m87 login`); the key from
/// M87_API_KEY (or `m87 login`). A self-signed server is trusted by its certificate's
/// fingerprint: `m87 login --fingerprint SHA256:…` (or M87_API_FINGERPRINT).
/// M87_TRUST_INVALID_CERT=true accepts any server certificate (emergencies only; relays stay
/// pinned).
#[derive(Debug, Parser)]
#[command(name = "m87", version, about, long_about, after_help = DEVICE_HELP)]
pub struct Cli {
    /// How to print results: aligned tables, or JSON for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,

    /// Use this profile's server and credentials (also M87_PROFILE; see `m87 profile`).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) profile: Option<crate::profile::ProfileName>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Log in: with the server's OpenID Connect provider, or with an API key.
    ///
    /// Without --api-key: the OAuth 2.0 device flow. m87 shows a URL and a code to approve in a
    /// browser (on any machine), then stores the tokens in the credentials file and renews them
    /// as they expire. The provider comes from the server (GET /v1/auth/config); M87_AUTH_DOMAIN
    /// (issuer), M87_AUTH_CLIENT_ID and M87_AUTH_AUDIENCE override it. A browser is opened when
    /// there is a display, unless M87_NO_BROWSER=1.
    ///
    /// Credentials are used in this order: M87_API_KEY, else the stored API key, else the stored
    /// login session. Each login replaces the stored login of the other kind.
    Login {
        /// A user API key (m87u_…), from `m87 api-keys create` or the server's admin.key;
        /// `-` reads it from standard input (keeps it out of the process list).
        #[arg(long)]
        api_key: Option<String>,
        /// The server (default: M87_API_URL, else https://127.0.0.1:8085).
        #[arg(long)]
        api_url: Option<String>,
        /// Trust the server by its certificate's SHA-256, as it printed it at start and wrote
        /// it to <data-dir>/tls/fingerprint (SHA256:AB:CD:…; also M87_API_FINGERPRINT). Stored
        /// for this server: later commands accept only that certificate from it.
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: Option<Fingerprint>,
    },
    /// Remove the stored API key and login session (revoking the session at the provider).
    Logout,
    /// The server, who you are, your organizations, and how you are logged in.
    Status,
    /// List, inspect, approve and reject devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Create, list and revoke user API keys.
    #[command(name = "api-keys")]
    ApiKeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
    /// Copy files and directories between this machine and a device.
    ///
    /// One side is `<device>:/path`. Permissions and modification times are kept; a broken
    /// transfer never leaves a half-written file under the final name.
    Cp {
        /// Source: a local path or <device>:/path.
        src: String,
        /// Destination: a local path or <device>:/path.
        dst: String,
        /// Copy directories recursively.
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Make a device directory match a local one (or the reverse), sending only what changed.
    ///
    /// Compares size and modification time, then content digests; large changed files send only
    /// their changed blocks.
    Sync {
        /// Source: a local directory or <device>:/path.
        src: String,
        /// Destination: a local directory or <device>:/path.
        dst: String,
        /// Delete files on the destination that the source does not have.
        #[arg(long)]
        delete: bool,
        /// Leave paths matching this glob alone (repeatable).
        #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
        excludes: Vec<String>,
        /// Show what would change, change nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Keep running and sync again within a second of every local change.
        #[arg(long)]
        watch: bool,
    },
    /// Organizations, their members and roles (admin, member, viewer).
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Who did what on which device, when, and how it ended: sessions and control changes.
    ///
    /// Newest first. Platform admins see everything; organization admins their organization's
    /// devices and members; owners their devices; everyone their own sessions.
    ///
    /// Examples:
    ///   m87 audit --since 2h
    ///   m87 audit --device robot-1 --action exec,shell --outcome failed
    ///   m87 audit --user alice@example.com --details -o json
    ///   m87 audit --follow
    ///   m87 audit play SESSION --speed 2      (replay a recorded shell)
    ///   m87 audit recording SESSION -o s.cast  (save it for asciinema)
    #[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only this device (name, id or unique prefix).
        #[arg(long)]
        device: Option<String>,
        #[command(flatten)]
        filters: crate::commands::audit::AuditFilters,
    },
    /// Run this machine as an m87 device.
    Runtime {
        #[command(subcommand)]
        command: RuntimeCommand,
    },
    /// Serve the Model Context Protocol on stdin/stdout, for AI agents (Claude, VS Code, …).
    ///
    /// Tools to list devices and read their status, run commands, copy files, read the audit
    /// trail, approve or reject devices and change access — each as the same CLI command, under
    /// the same grants, roles and audit.
    #[command(after_long_help = crate::commands::mcp::HELP)]
    Mcp,
    // --- profiles, completions, version (i13-cli) ---
    /// Several servers or accounts side by side, each with its own credentials file.
    ///
    /// Examples:
    ///   m87 profile add staging --api-url https://m87.staging.example
    ///   m87 --profile staging login
    ///   m87 profile use staging        (the default from now on; M87_PROFILE overrides it)
    ///   m87 profile list
    #[command(verbatim_doc_comment)]
    Profile {
        #[command(subcommand)]
        command: crate::commands::profile::ProfileCommand,
    },
    /// Print a completion script: `m87 completion bash > /etc/bash_completion.d/m87`,
    /// `m87 completion zsh > "${fpath[1]}/_m87"`, `m87 completion fish >
    /// ~/.config/fish/completions/m87.fish`.
    Completion {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: crate::commands::version::CompletionShell,
    },
    /// The versions of this CLI, of the server and, for a device, of its runtime.
    Version {
        /// A device (name, id or unique prefix) whose runtime version to ask for.
        device: Option<String>,
    },
    // --- end i13-cli ---
    /// Replace this m87 with the release the server serves (the binaries install.sh installs).
    ///
    /// The manifest's signature and the binary's SHA-256 are checked; the download resumes
    /// after an interruption and is renamed over the binary in one step.
    Update {
        #[command(flatten)]
        args: UpdateArgs,
    },
    /// Reach devices with OpenSSH tools (`ssh`, `scp`, `sftp`, `rsync -e ssh`) as DEVICE.m87.
    ///
    /// Examples:
    ///   m87 ssh enable       (adds a `Host *.m87` block to ~/.ssh/config)
    ///   ssh robot-1.m87 uname -a
    ///   scp build.tar robot-1.m87:/tmp/
    ///   m87 ssh disable      (removes exactly that block)
    #[command(verbatim_doc_comment)]
    Ssh {
        #[command(subcommand)]
        command: SshCommand,
    },
    /// OpenSSH's ProxyCommand for `*.m87` hosts (written by `m87 ssh enable`): opens an ssh
    /// session on the device and relays standard input and output through it.
    #[command(name = "ssh-proxy", hide = true)]
    SshProxy {
        /// The host as OpenSSH names it (`%h`): `robot-1.m87`.
        host: String,
        /// The login asked for (`%r`); the device refuses one that is not its runtime's user.
        user: Option<String>,
    },
    /// `m87 <device> exec|shell|forward …`: operate one device (see `m87 <device> --help`).
    #[command(external_subcommand)]
    Device(Vec<String>),
}

/// `m87 ssh …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SshCommand {
    /// Add the m87 block to ~/.ssh/config (created 0600 when missing; the rest is untouched).
    Enable,
    /// Remove the m87 block from ~/.ssh/config.
    Disable,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DevicesCommand {
    /// Devices and registration requests you can see, newest request first, with how many
    /// requests wait for a decision per owner scope.
    #[command(alias = "ls")]
    List {
        /// Only rows whose name contains this (ignoring case).
        #[arg(long)]
        name: Option<String>,
        /// Only rows with this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
    },
    /// One device in detail (by name, id, request id, or a unique prefix).
    Show {
        /// Name, device id, request id or unique prefix.
        device: String,
    },
    /// Approve a pending registration request.
    Approve {
        /// The request id (or the pending device's name, id or a unique prefix).
        request: String,
    },
    /// Reject a pending request, or remove an approved device.
    Reject {
        /// Request id, device id, name or unique prefix.
        id: String,
    },
    /// A device's session-recording policy: `policy show DEVICE`, `policy set DEVICE
    /// record-sessions on|off|inherit`.
    Policy {
        #[command(subcommand)]
        command: DevicePolicyCommand,
    },
}

/// The one policy there is so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PolicyName {
    /// Record terminal sessions (shell, exec -t) as asciicast, uploaded to the server.
    RecordSessions,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DevicePolicyCommand {
    /// The device's own setting, and what applies (its own, its organization's or the
    /// default).
    Show {
        /// Name, device id or unique prefix.
        device: String,
    },
    /// Set it: `inherit` follows the organization's policy (personal devices: off).
    Set {
        /// Name, device id or unique prefix.
        device: String,
        /// The policy.
        #[arg(value_enum)]
        policy: PolicyName,
        /// on, off or inherit.
        setting: m87_events::policy::DeviceSetting,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum OrgPolicyCommand {
    /// The organization's policy (on by default).
    Show {
        /// The organization.
        org: OrgId,
    },
    /// Set it (admins only); devices that set their own keep theirs.
    Set {
        /// The organization.
        org: OrgId,
        /// The policy.
        #[arg(value_enum)]
        policy: PolicyName,
        /// on or off.
        #[arg(value_enum)]
        setting: OnOff,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Write the chained records to standard output, oldest first, one per line: OCSF, ECS or
    /// the entry itself as JSON, or CEF (platform admins). For one-off pulls into a SIEM;
    /// `m87-server --audit-sinks` streams them continuously.
    ///
    /// Example: m87 audit export --format ocsf --since 24h > audit.jsonl
    Export {
        /// ocsf, ecs, cef or json (the entry itself, with its chain hashes).
        #[arg(long, default_value = "ocsf")]
        format: String,
        /// Records at or after this time (a duration back from now, or a time).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Records before this time.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
    },
    /// Replay a session's recording in this terminal, at its pace (idle gaps over 2 s are
    /// shortened to 2 s).
    Play {
        /// The session id.
        session: m87_events::SessionId,
        /// Play this many times faster.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
    /// Save a session's recording as an asciicast v2 file (asciinema plays it):
    /// `m87 audit recording SESSION -o FILE` (`-o -`: standard output).
    Recording {
        /// The session id, then `-o FILE` (`-o -` for standard output).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "SESSION -o FILE"
        )]
        args: Vec<String>,
    },
}

/// A status to filter the device list by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StatusFilter {
    /// Waiting for an approver.
    Pending,
    /// Part of the fleet.
    Approved,
    /// Refused by an approver.
    Rejected,
    /// Not decided within its lifetime.
    Expired,
    /// Removed from the fleet.
    Removed,
}

impl From<StatusFilter> for m87_events::api::DeviceStatus {
    fn from(s: StatusFilter) -> Self {
        match s {
            StatusFilter::Pending => Self::Pending,
            StatusFilter::Approved => Self::Approved,
            StatusFilter::Rejected => Self::Rejected,
            StatusFilter::Expired => Self::Expired,
            StatusFilter::Removed => Self::Removed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApiKeysCommand {
    /// Create a user API key and print it (once).
    Create {
        /// Whose key (platform admins only; default: yourself).
        #[arg(long)]
        email: Option<Email>,
        /// A label to recognise the key by.
        #[arg(long)]
        name: Option<String>,
    },
    /// Your API keys (all user keys for platform admins).
    #[command(alias = "ls")]
    List,
    /// Revoke an API key by id.
    Revoke {
        /// The key's id (from `m87 api-keys list`).
        id: KeyId,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum OrgCommand {
    /// Create an organization; you become its admin.
    Create {
        /// Its id: lowercase letters, digits and '-'.
        id: OrgId,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Your organizations.
    #[command(alias = "ls")]
    List,
    /// Delete an organization (admins only).
    Delete {
        /// The organization.
        id: OrgId,
    },
    /// Manage members.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// The organization's policy: `policy show ORG`, `policy set ORG record-sessions on|off`.
    Policy {
        #[command(subcommand)]
        command: OrgPolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MembersCommand {
    /// Add a member (admins only).
    Add {
        /// The organization.
        org: OrgId,
        /// The user's email.
        email: Email,
        /// admin (approves devices, manages members and access), member (operates devices) or
        /// viewer (reads only).
        #[arg(long, default_value = "member")]
        role: Role,
    },
    /// Remove a member (admins; anyone may remove themselves).
    Remove {
        /// The organization.
        org: OrgId,
        /// The user's email.
        email: Email,
    },
    /// List the members.
    #[command(alias = "ls")]
    List {
        /// The organization.
        org: OrgId,
    },
    /// Change a member's role (admins only).
    Role {
        /// The organization.
        org: OrgId,
        /// The user's email.
        email: Email,
        /// admin, member or viewer.
        role: Role,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RuntimeCommand {
    /// Register this device (once), wait for approval, then stay enrolled until stopped.
    ///
    /// Environment: M87_API_URL, OWNER_REFERENCE (instead of --email/--org),
    /// M87_APPROVAL_POLL_SECS (poll interval), M87_CONFIG_DIR (state directory),
    /// M87_WORKER_THREADS (async worker threads, default 1).
    Run {
        /// Register under this user's scope.
        #[arg(long, conflicts_with = "org")]
        email: Option<Email>,
        /// Register under this organization's scope.
        #[arg(long)]
        org: Option<OrgId>,
        /// The device's name (default: the host name).
        #[arg(long)]
        name: Option<DeviceName>,
        /// Trust the server by its certificate's SHA-256 (SHA256:AB:CD:…; also
        /// M87_API_FINGERPRINT), stored for it in the credentials file for later runs.
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: Option<Fingerprint>,
        /// The Docker API socket `m87 <device> docker` reaches (default: /var/run/docker.sock,
        /// else Podman's socket for this user, whichever exists).
        #[arg(long, env = "M87_DOCKER_SOCKET", value_name = "PATH")]
        docker_socket: Option<std::path::PathBuf>,
    },
    /// Show the runtime's service (when installed), its enrolment, its tunnel and relay.
    Status {
        /// The system service's state (/var/lib/m87) rather than your own.
        #[arg(long)]
        system: bool,
    },
    /// Remove this device's credentials (the device id is kept); stops the service first.
    Logout {
        /// The system service's credentials (/var/lib/m87) rather than your own.
        #[arg(long)]
        system: bool,
    },
    /// Install the runtime as the systemd service m87-runtime.service (your user's service;
    /// `--system`: a system service under the dedicated user `m87`, as root). Takes the
    /// options of `m87 runtime run`, used when the device registers.
    ///
    /// Environment passed on to the service when set: M87_API_URL, M87_API_FINGERPRINT,
    /// M87_TRUST_INVALID_CERT, OWNER_REFERENCE, M87_APPROVAL_POLL_SECS, M87_CHECK_INTERVAL_SECS,
    /// M87_RUNTIME_LOG, M87_RUNTIME_LOG_LEVEL, M87_WORKER_THREADS. See docs/runtime-service.md.
    Enable {
        /// Start it now too.
        #[arg(long)]
        now: bool,
        /// A system service (/etc/systemd/system, user `m87`, state in /var/lib/m87).
        #[arg(long)]
        system: bool,
        /// Print the unit and where it would go; change nothing.
        #[arg(long)]
        print: bool,
        /// The server's URL (M87_API_URL in the unit).
        #[arg(long, env = "M87_API_URL", value_name = "URL")]
        api_url: Option<String>,
        #[command(flatten)]
        registration: ServiceRegistration,
    },
    /// Stop starting the service at boot; `--now` also stops it and removes the unit.
    Disable {
        /// Also stop it and remove its unit file.
        #[arg(long)]
        now: bool,
        /// The system service.
        #[arg(long)]
        system: bool,
    },
    /// Start the installed service.
    Start {
        /// The system service.
        #[arg(long)]
        system: bool,
    },
    /// Stop the installed service.
    Stop {
        /// The system service.
        #[arg(long)]
        system: bool,
    },
    /// Restart the installed service.
    Restart {
        /// The system service.
        #[arg(long)]
        system: bool,
    },
    Update {
        #[command(flatten)]
        args: UpdateArgs,
        /// The system service's runtime (/var/lib/m87, as root) rather than your own.
        #[arg(long)]
        system: bool,
    },
}

/// The registration options `m87 runtime enable` writes into the service's command line.
#[derive(Debug, clap::Args)]
pub(crate) struct ServiceRegistration {
    /// Register under this user's scope.
    #[arg(long, conflicts_with = "org")]
    pub(crate) email: Option<Email>,
    /// Register under this organization's scope.
    #[arg(long)]
    pub(crate) org: Option<OrgId>,
    /// The device's name (default: the host name).
    #[arg(long)]
    pub(crate) name: Option<DeviceName>,
    /// Trust the server by its certificate's SHA-256 (SHA256:AB:CD:…).
    #[arg(long, value_name = "SHA256:…")]
    pub(crate) fingerprint: Option<Fingerprint>,
    /// The Docker API socket the runtime reaches.
    #[arg(long, env = "M87_DOCKER_SOCKET", value_name = "PATH")]
    pub(crate) docker_socket: Option<std::path::PathBuf>,
}

impl ServiceRegistration {
    /// The options as arguments of `m87 runtime run`.
    pub(crate) fn run_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(flag.to_owned());
                args.push(v);
            }
        };
        push("--email", self.email.as_ref().map(ToString::to_string));
        push("--org", self.org.as_ref().map(ToString::to_string));
        push("--name", self.name.as_ref().map(ToString::to_string));
        push(
            "--fingerprint",
            self.fingerprint.as_ref().map(ToString::to_string),
        );
        push(
            "--docker-socket",
            self.docker_socket.as_ref().map(|p| p.display().to_string()),
        );
        args
    }
}

/// `m87 update` and `m87 runtime update`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpdateArgs {
    /// Only say whether a newer release is served; change nothing.
    #[arg(long)]
    pub(crate) check: bool,
    /// The binary to replace (default: this one).
    #[arg(long, env = "M87_UPDATE_PATH", value_name = "PATH")]
    pub(crate) path: Option<std::path::PathBuf>,
}
