//! The device's side of `m87 cp DEVICE:PATH LOCAL`.

use m87_events::tunnel::files::FileMsg;

use m87_files::stream::send_tree;
use m87_files::tree::source_tree;
use m87_files::{NoProgress, TransferError, Wire};

use super::resolve_device_path;

/// Serves a pull: `Ready`, `Tree`, the tree stream.
pub(super) async fn serve(
    wire: &mut Wire,
    path: &str,
    recursive: bool,
) -> Result<(), TransferError> {
    let source = resolve_device_path(path)?;
    let tree = source_tree(&source, recursive).await?;
    wire.send(&FileMsg::Ready {
        path: source.display().to_string(),
    })
    .await?;
    wire.send(&FileMsg::Tree {
        name: tree.name.clone(),
        kind: tree.kind,
        files: tree.files,
        bytes: tree.bytes,
    })
    .await?;
    let files = send_tree(wire, &tree.entries, &NoProgress).await?;
    tracing::info!(path = %source.display(), files, "sent files");
    Ok(())
}
