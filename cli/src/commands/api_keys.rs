//! `m87 api-keys create|list|revoke`.

use m87_events::api::{ApiKeySummary, CreateApiKeyRequest, CreatedApiKey};
use m87_events::{Email, KeyId};

use crate::context::user_client;
use crate::output::{Output, print_json, print_table, when};

/// `m87 api-keys create`.
pub async fn create(
    email: Option<Email>,
    name: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let created: CreatedApiKey = user_client()?
        .post("/v1/api-keys", &CreateApiKeyRequest { email, name })
        .await?;
    match output {
        Output::Json => print_json(&created),
        Output::Table => {
            eprintln!(
                "created api key {} for {}; it is shown only now, store it safely:",
                created.id, created.email
            );
            println!("{}", created.key);
            Ok(())
        }
    }
}

/// `m87 api-keys list`.
pub async fn list(output: Output) -> anyhow::Result<()> {
    let keys: Vec<ApiKeySummary> = user_client()?.get("/v1/api-keys").await?;
    match output {
        Output::Json => print_json(&keys),
        Output::Table => {
            if keys.is_empty() {
                println!("no api keys");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.to_string(),
                        k.email.to_string(),
                        k.name.clone(),
                        k.hint.clone(),
                        when(&k.created_at),
                        k.revoked_at
                            .map(|t| format!("revoked {}", when(&t)))
                            .unwrap_or_else(|| "active".into()),
                    ]
                })
                .collect();
            print_table(&["ID", "EMAIL", "NAME", "KEY", "CREATED", "STATE"], &rows);
            Ok(())
        }
    }
}

/// `m87 api-keys revoke`.
pub async fn revoke(id: KeyId) -> anyhow::Result<()> {
    user_client()?.delete(&format!("/v1/api-keys/{id}")).await?;
    println!("revoked api key {id}");
    Ok(())
}
