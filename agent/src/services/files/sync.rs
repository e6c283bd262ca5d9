//! The device's side of a sync: `Ready`, then the role the client did not take.

use m87_events::tunnel::files::FileMsg;
use m87_files::sync::{check_source_root, prepare_destination_root};
use m87_files::{NoProgress, SyncParams, TransferError, Wire, sync_destination, sync_source};

use super::resolve_device_path;

/// Serves a sync: `Ready`, then the source or destination role.
pub(super) async fn serve(
    wire: &mut Wire,
    path: &str,
    to_device: bool,
    params: &SyncParams,
) -> Result<(), TransferError> {
    let root = resolve_device_path(path)?;
    let ready = FileMsg::Ready {
        path: root.display().to_string(),
    };
    let report = if to_device {
        prepare_destination_root(&root, params.dry_run).await?;
        wire.send(&ready).await?;
        sync_destination(wire, &root, params, &NoProgress).await?
    } else {
        check_source_root(&root).await?;
        wire.send(&ready).await?;
        sync_source(wire, &root, params, &NoProgress).await?
    };
    tracing::info!(
        path = %root.display(),
        to_device,
        dry_run = params.dry_run,
        created = report.created.len(),
        updated = report.updated.len(),
        deleted = report.deleted.len(),
        "sync done"
    );
    Ok(())
}
