//! "did you mean `devices`?": a first word that is not a command is taken as a device name;
//! when it is close to a command and no such device exists, say which command was meant.

use clap::CommandFactory;
use m87_events::api::DeviceSummary;

/// The top-level command closest to `word` by edit distance (a swap of two neighbouring
/// letters counts as one edit), when it is close enough to be a typo: one edit for words of
/// up to four letters, two for longer ones.
pub fn close_command(word: &str) -> Option<String> {
    let word = word.to_ascii_lowercase();
    let limit = if word.chars().count() <= 4 { 1 } else { 2 };
    let command = crate::args::Cli::command();
    command
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .flat_map(|c| {
            std::iter::once(c.get_name().to_owned()).chain(c.get_all_aliases().map(str::to_owned))
        })
        // clap adds `help` only when it builds the command.
        .chain(std::iter::once("help".to_owned()))
        .map(|name| (strsim::damerau_levenshtein(&word, &name), name))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Whether the server knows a live device by this name, id or prefix. `None` when it cannot be
/// asked (not logged in, unreachable).
async fn device_exists(word: &str) -> Option<bool> {
    let client = crate::context::user_client().ok()?;
    let devices: Vec<DeviceSummary> = client.get("/v1/devices").await.ok()?;
    Some(matches!(
        crate::commands::devices::resolve(&devices, word),
        Ok(Some(_)) | Err(_)
    ))
}

/// The message for a first word that looks like a mistyped command and is not a device.
pub async fn misspelled(word: &str) -> Option<String> {
    let command = close_command(word)?;
    if device_exists(word).await == Some(true) {
        return None;
    }
    Some(format!(
        "`{word}` is neither a command nor a device you can see: did you mean `{command}`? \
         (m87 --help lists the commands, m87 devices list the devices)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_of_commands_are_recognised() {
        assert_eq!(close_command("devcies").as_deref(), Some("devices"));
        assert_eq!(close_command("devics").as_deref(), Some("devices"));
        assert_eq!(close_command("logni").as_deref(), Some("login"));
        assert_eq!(close_command("stauts").as_deref(), Some("status"));
        assert_eq!(close_command("hepl").as_deref(), Some("help"));
        assert_eq!(close_command("robot-1"), None);
        assert_eq!(close_command("pi"), None);
        assert_eq!(close_command("devices"), None);
    }
}
