//! The `sftp` subsystem (protocol version 3, served by russh-sftp): what `sftp` and OpenSSH 9's
//! `scp` speak. Relative paths start at the user's home directory. Every file opened for
//! reading or writing, and every removal, rename and directory made or removed, is noted in
//! the session's report.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use russh::Channel;
use russh::server::Msg;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use crate::services::ServiceContext;

/// Largest read answered at once (OpenSSH asks for 32 KiB to 256 KiB).
const MAX_READ: u32 = 256 * 1024;

/// The channel's stream; when the SFTP server lets go of it (its client ended), the channel
/// ends as sshd ends it: exit status 0, EOF, then close (`scp` checks that status).
struct Watched {
    stream: Option<russh::ChannelStream<Msg>>,
    id: russh::ChannelId,
    handle: russh::server::Handle,
}

impl Watched {
    fn inner(&mut self) -> std::io::Result<&mut russh::ChannelStream<Msg>> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let (stream, id, handle) = (self.stream.take(), self.id, self.handle.clone());
        // The stream closes the channel when dropped: the status must go out before.
        tokio::spawn(async move {
            let _ = handle.exit_status_request(id, 0).await;
            let _ = handle.eof(id).await;
            drop(stream);
        });
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.inner() {
            Ok(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.inner() {
            Ok(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.inner() {
            Ok(s) => std::pin::Pin::new(s).poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.inner() {
            Ok(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

/// Starts the subsystem on a session channel.
pub(super) fn serve(
    channel: Channel<Msg>,
    handle: russh::server::Handle,
    home: PathBuf,
    ctx: ServiceContext,
) {
    let stream = Watched {
        id: channel.id(),
        stream: Some(channel.into_stream()),
        handle,
    };
    let handler = Sftp {
        home,
        ctx,
        next: 0,
        handles: HashMap::new(),
    };
    let config = russh_sftp::server::Config {
        max_client_packet_len: 512 * 1024,
    };
    tokio::spawn(russh_sftp::server::run_with_config(stream, handler, config));
}

/// An open handle. Files are read and written with positioned calls made inline: each is one
/// page-cache copy of at most [`MAX_READ`] bytes, cheaper than a hand-off to a blocking thread.
enum Open {
    File(std::fs::File),
    /// A directory's entries, handed out at the first read.
    Dir(Option<Vec<File>>),
}

/// The subsystem's state for one channel.
struct Sftp {
    home: PathBuf,
    ctx: ServiceContext,
    next: u64,
    handles: HashMap<String, Open>,
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// An I/O error as the client sees it.
fn fail(e: std::io::Error) -> StatusReply {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    StatusReply {
        status_code: code,
        error_message: Some(e.to_string()),
        language_tag: None,
    }
}

/// A path with `.` and `..` resolved without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl Sftp {
    fn path(&self, p: &str) -> PathBuf {
        if p.is_empty() {
            return self.home.clone();
        }
        normalize(&self.home.join(p))
    }

    fn keep(&mut self, open: Open) -> String {
        self.next += 1;
        let handle = self.next.to_string();
        self.handles.insert(handle.clone(), open);
        handle
    }

    fn file(&mut self, handle: &str) -> Result<&mut std::fs::File, StatusReply> {
        match self.handles.get_mut(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(StatusReply::new(StatusCode::Failure)),
        }
    }

    fn note(&self, kind: &'static str, path: &Path) {
        self.ctx
            .note(kind, super::short(&path.display().to_string()));
    }
}

/// Applies the attributes a client sets (size, permissions, owner, times).
async fn set_attrs(path: &Path, attrs: &FileAttributes) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(size) = attrs.size {
        let f = tokio::fs::OpenOptions::new().write(true).open(path).await?;
        f.set_len(size).await?;
    }
    if let Some(mode) = attrs.permissions {
        let perms = std::fs::Permissions::from_mode(mode & 0o7777);
        tokio::fs::set_permissions(path, perms).await?;
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::chown(path, attrs.uid, attrs.gid)?;
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(atime));
        let mt = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(mtime));
        let times = std::fs::FileTimes::new().set_accessed(at).set_modified(mt);
        std::fs::File::options()
            .write(true)
            .open(path)
            .or_else(|_| std::fs::File::open(path))?
            .set_times(times)?;
    }
    Ok(())
}

async fn list_dir(path: &Path) -> std::io::Result<Vec<File>> {
    let mut entries = tokio::fs::read_dir(path).await?;
    let mut files = Vec::new();
    for name in [".", ".."] {
        if let Ok(meta) = tokio::fs::metadata(path.join(name)).await {
            files.push(File::new(name, FileAttributes::from(&meta)));
        }
    }
    while let Some(entry) = entries.next_entry().await? {
        if let Ok(meta) = tokio::fs::symlink_metadata(entry.path()).await {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push(File::new(name, FileAttributes::from(&meta)));
        }
    }
    Ok(files)
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusReply::new(StatusCode::OpUnsupported)
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(&filename);
        let writes = pflags.intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE);
        self.note(if writes { "sftp_write" } else { "sftp_read" }, &path);
        let mut options: std::fs::OpenOptions = pflags.into();
        options.mode(attrs.permissions.unwrap_or(0o644) & 0o7777);
        let file = options.open(&path).map_err(fail)?;
        let handle = self.keep(Open::File(file));
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.handles.remove(&handle);
        Ok(ok(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        use std::os::unix::fs::FileExt;
        let file = self.file(&handle)?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        while filled < data.len() {
            let n = file
                .read_at(&mut data[filled..], offset + filled as u64)
                .map_err(fail)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        data.truncate(filled);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        use std::os::unix::fs::FileExt;
        let file = self.file(&handle)?;
        file.write_all_at(&data, offset).map_err(fail)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = tokio::fs::symlink_metadata(self.path(&path))
            .await
            .map_err(fail)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let meta = tokio::fs::metadata(self.path(&path)).await.map_err(fail)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let meta = self.file(&handle)?.metadata().map_err(fail)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        set_attrs(&self.path(&path), &attrs).await.map_err(fail)?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        use std::os::fd::AsRawFd;
        let fd = self.file(&handle)?.as_raw_fd();
        let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(fail)?;
        set_attrs(&path, &attrs).await.map_err(fail)?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let files = list_dir(&self.path(&path)).await.map_err(fail)?;
        let handle = self.keep(Open::Dir(Some(files)));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.handles.get_mut(&handle) {
            Some(Open::Dir(files)) => match files.take() {
                Some(files) if !files.is_empty() => Ok(Name { id, files }),
                _ => Err(StatusReply::new(StatusCode::Eof)),
            },
            _ => Err(StatusReply::new(StatusCode::Failure)),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let path = self.path(&filename);
        self.note("sftp_remove", &path);
        tokio::fs::remove_file(&path).await.map_err(fail)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        use std::os::unix::fs::DirBuilderExt;
        let path = self.path(&path);
        self.note("sftp_mkdir", &path);
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(attrs.permissions.unwrap_or(0o755) & 0o7777);
        builder.create(&path).map_err(fail)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        self.note("sftp_rmdir", &path);
        tokio::fs::remove_dir(&path).await.map_err(fail)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let wanted = self.path(&path);
        let real = tokio::fs::canonicalize(&wanted).await.unwrap_or(wanted);
        Ok(Name {
            id,
            files: vec![File::dummy(real.display().to_string())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (self.path(&oldpath), self.path(&newpath));
        self.ctx.note(
            "sftp_rename",
            super::short(&format!("{} -> {}", from.display(), to.display())),
        );
        tokio::fs::rename(&from, &to).await.map_err(fail)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = tokio::fs::read_link(self.path(&path)).await.map_err(fail)?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.display().to_string())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        // OpenSSH's client (and server) put the target first: `linkpath` holds the target.
        let link = self.path(&targetpath);
        self.note("sftp_symlink", &link);
        tokio::fs::symlink(&linkpath, &link).await.map_err(fail)?;
        Ok(ok(id))
    }
}
