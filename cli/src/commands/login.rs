//! `m87 login` and `m87 logout`.

use m87_agent::credentials::UserCredentials;
use m87_agent::http::{ApiClient, api_url_from_env, trust_invalid_cert_from_env};
use m87_events::api::WhoAmI;

use crate::context::{DEFAULT_API_URL, credentials_file};

/// Checks `key` against the server and stores it.
pub async fn login(api_key: String, api_url: Option<String>) -> anyhow::Result<()> {
    let api_key = if api_key == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line
    } else {
        api_key
    };
    let api_key = api_key.trim().to_owned();
    anyhow::ensure!(!api_key.is_empty(), "no api key given");
    let api_url = api_url
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .or_else(api_url_from_env)
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let client = ApiClient::new(
        &api_url,
        Some(api_key.clone()),
        trust_invalid_cert_from_env(),
    )?;
    let me: WhoAmI = client.get("/v1/whoami").await?;
    let Some(email) = me.email else {
        anyhow::bail!("that is a device key; log in with a user api key (m87u_…)");
    };
    let file = credentials_file()?;
    file.update(|c| {
        c.user = Some(UserCredentials {
            api_key,
            api_url: client.base_url().to_owned(),
        })
    })?;
    println!(
        "logged in to {} as {email}{}; key stored in {}",
        client.base_url(),
        if me.platform_admin {
            " (platform admin)"
        } else {
            ""
        },
        file.path().display()
    );
    Ok(())
}

/// Removes the stored user key.
pub fn logout() -> anyhow::Result<()> {
    let file = credentials_file()?;
    let had = file.load()?.user.is_some();
    file.update(|c| c.user = None)?;
    if had {
        println!(
            "logged out; removed the stored api key from {}",
            file.path().display()
        );
    } else {
        println!("not logged in; nothing to remove");
    }
    Ok(())
}
