//! The device's side of `m87 cp LOCAL DEVICE:PATH`.

use m87_events::tunnel::files::{EntryKind, FileMsg, validate_name};

use m87_files::stream::receive_tree;
use m87_files::write::resolve_destination;
use m87_files::{NoProgress, TransferError, Wire};

use super::resolve_device_path;

/// Receives a push: `Tree`, answers `Ready`, receives the tree stream, answers `Done`.
pub(super) async fn serve(
    wire: &mut Wire,
    path: &str,
    recursive: bool,
) -> Result<(), TransferError> {
    let target = resolve_device_path(path)?;
    let (name, kind) = match wire.recv_msg().await? {
        FileMsg::Tree { name, kind, .. } => (name, kind),
        m => return Err(TransferError::unexpected("tree", &m)),
    };
    validate_name(&name)
        .map_err(|e| TransferError::protocol(format!("refusing name {name:?}: {e}")))?;
    match kind {
        EntryKind::File => {}
        EntryKind::Dir if recursive => {}
        EntryKind::Dir => {
            return Err(TransferError::Local(format!(
                "'{name}' is a directory (use -r to copy directories)"
            )));
        }
        EntryKind::Symlink => {
            return Err(TransferError::protocol("a tree's root cannot be a symlink"));
        }
    }
    let dest = resolve_destination(&target, &name, kind).await?;
    wire.send(&FileMsg::Ready {
        path: dest.display().to_string(),
    })
    .await?;
    let (files, bytes) = receive_tree(wire, &dest, kind, &NoProgress).await?;
    wire.send(&FileMsg::Done { files, bytes }).await?;
    tracing::info!(path = %dest.display(), files, bytes, "received files");
    Ok(())
}
